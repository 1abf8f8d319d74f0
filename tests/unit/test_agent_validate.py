"""validate-all and parameter checking, run as Pacemaker runs it: a subprocess with a clean
environment.  Uses test:///default, so no daemon is needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kvmha.agents import guest_params

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "agents" / "Guest"
PY = "/usr/bin/python3"
DOMAIN = """<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>
"""


def run_agent(action: str, tmp_path: Path, **params: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HA_RSCTMP": str(tmp_path / "rsc"),
        "HA_LOGFACILITY": "none",
        "OCF_RESOURCE_INSTANCE": "vm1",
        "OCF_ROOT": "/usr/lib/ocf",
    }
    for k, v in params.items():
        if k.startswith(("OCF_", "HA_")):
            env[k] = v
        else:
            env[f"OCF_RESKEY_{k}"] = v
    return subprocess.run(
        [PY, str(LAUNCHER), action],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    p = tmp_path / "vm1.xml"
    p.write_text(DOMAIN.format(name="vm1"))
    return p


def reason(res: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("ocf-exit-reason:")]
    assert lines, f"no exit reason in {res.stderr!r}"
    return lines[-1]


def test_valid(tmp_path: Path, config: Path) -> None:
    res = run_agent("validate-all", tmp_path, config=str(config), hypervisor="test:///default")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr


def test_no_config(tmp_path: Path) -> None:
    res = run_agent("validate-all", tmp_path, hypervisor="test:///default")
    assert res.returncode == 6
    assert "config" in reason(res)


def test_missing_config_file(tmp_path: Path) -> None:
    res = run_agent("validate-all", tmp_path, config=str(tmp_path / "nope.xml"))
    assert res.returncode == 5
    assert "nope.xml" in reason(res)


def test_unreadable_config_directory(tmp_path: Path) -> None:
    # root can read any file, so "unreadable" here is a config that is not a file
    res = run_agent("validate-all", tmp_path, config=str(tmp_path))
    assert res.returncode == 5
    assert "not a regular file" in reason(res)


def test_relative_config(tmp_path: Path) -> None:
    res = run_agent("validate-all", tmp_path, config="vm1.xml")
    assert res.returncode == 6
    assert "absolute" in reason(res)


@pytest.mark.parametrize(
    "text,expect",
    [
        ("<network><name>n</name></network>", "not a libvirt domain XML"),
        ("<domain type='test'><memory>1</memory></domain>", "no <name>"),
        ("this is < not xml", "not well-formed"),
    ],
)
def test_config_not_a_domain(tmp_path: Path, text: str, expect: str) -> None:
    p = tmp_path / "x.xml"
    p.write_text(text)
    res = run_agent("validate-all", tmp_path, config=str(p), hypervisor="test:///default")
    assert res.returncode == 6
    assert expect in reason(res)


def test_unknown_hypervisor_uri(tmp_path: Path, config: Path) -> None:
    res = run_agent("validate-all", tmp_path, config=str(config), hypervisor="bogus:///system")
    assert res.returncode == 6
    assert "hypervisor" in reason(res)


def test_not_a_uri(tmp_path: Path, config: Path) -> None:
    res = run_agent("validate-all", tmp_path, config=str(config), hypervisor="qemu")
    assert res.returncode == 6
    assert "hypervisor" in reason(res)


def test_unreachable_hypervisor(tmp_path: Path, config: Path) -> None:
    res = run_agent(
        "validate-all",
        tmp_path,
        config=str(config),
        hypervisor=f"qemu:///system?socket={tmp_path}/no-such-sock",
    )
    assert res.returncode == 1
    assert "cannot connect" in reason(res)


INTEGER_PARAMS = [p.name for p in guest_params.PARAMS if p.kind == "integer"]
BOOLEAN_PARAMS = [p.name for p in guest_params.PARAMS if p.kind == "boolean"]


@pytest.mark.parametrize("name", INTEGER_PARAMS)
@pytest.mark.parametrize("value", ["abc", "1.5", "-1"])
def test_bad_integer(tmp_path: Path, config: Path, name: str, value: str) -> None:
    p = guest_params.BY_NAME[name]
    if value == "-1" and p.lo is None:
        pytest.skip("no lower bound")
    res = run_agent(
        "validate-all", tmp_path, config=str(config), hypervisor="test:///default", **{name: value}
    )
    assert res.returncode == 6, res.stderr
    assert name in reason(res)


@pytest.mark.parametrize("name", [p.name for p in guest_params.PARAMS if p.hi is not None])
def test_integer_above_range(tmp_path: Path, config: Path, name: str) -> None:
    p = guest_params.BY_NAME[name]
    assert p.hi is not None
    res = run_agent(
        "validate-all",
        tmp_path,
        config=str(config),
        hypervisor="test:///default",
        **{name: str(p.hi + 1)},
    )
    assert res.returncode == 6
    assert name in reason(res)


@pytest.mark.parametrize("name", BOOLEAN_PARAMS)
def test_bad_boolean(tmp_path: Path, config: Path, name: str) -> None:
    res = run_agent(
        "validate-all",
        tmp_path,
        config=str(config),
        hypervisor="test:///default",
        **{name: "maybe"},
    )
    assert res.returncode == 6
    assert name in reason(res)


@pytest.mark.parametrize(
    "name,value",
    [
        ("shutdown_mode", "acpi,reboot"),
        ("migration_user", "Root User"),
        ("migration_transport", "ssh+tcp"),
        ("migrate_options", "--bogus"),
        ("migrate_options", "--migrateuri="),
        ("health_tcp", "localhost"),
        ("health_tcp", "host:99999"),
        ("health_http", "ftp://x/"),
        ("snapshot", "relative"),
        ("monitor_scripts", "relative.sh"),
    ],
)
def test_bad_string_values(tmp_path: Path, config: Path, name: str, value: str) -> None:
    res = run_agent(
        "validate-all", tmp_path, config=str(config), hypervisor="test:///default", **{name: value}
    )
    assert res.returncode == 6, res.stderr
    assert name in reason(res)


def test_snapshot_with_force_stop(tmp_path: Path, config: Path) -> None:
    res = run_agent(
        "validate-all",
        tmp_path,
        config=str(config),
        hypervisor="test:///default",
        snapshot=str(tmp_path),
        force_stop="true",
    )
    assert res.returncode == 6
    r = reason(res)
    assert "force_stop" in r and "snapshot" in r


def test_missing_snapshot_dir_and_script(tmp_path: Path, config: Path) -> None:
    res = run_agent(
        "validate-all",
        tmp_path,
        config=str(config),
        hypervisor="test:///default",
        snapshot=str(tmp_path / "nodir"),
    )
    assert res.returncode == 5
    assert "snapshot" in reason(res)
    res = run_agent(
        "validate-all",
        tmp_path,
        config=str(config),
        hypervisor="test:///default",
        monitor_scripts=str(tmp_path / "nope.sh"),
    )
    assert res.returncode == 5
    assert "monitor_scripts" in reason(res)


def test_good_values_accepted(tmp_path: Path, config: Path) -> None:
    script = tmp_path / "ok.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    res = run_agent(
        "validate-all",
        tmp_path,
        config=str(config),
        hypervisor="test:///default",
        shutdown_mode="acpi,agent",
        shutdown_timeout="30",
        force_stop="no",
        migrate_options="--p2p --tunnelled --migrateuri=tcp://%n-mig",
        migration_speed="100",
        migration_downtime="300",
        migrateport="49152",
        health_tcp="127.0.0.1:22 [::1]:80",
        health_http="http://127.0.0.1:8080/x",
        monitor_scripts=str(script),
        snapshot=str(tmp_path),
        migration_user="root",
        migration_transport="ssh",
    )
    assert res.returncode == 0, res.stderr


def test_exit_reason_prefix_from_environment(tmp_path: Path) -> None:
    res = run_agent(
        "validate-all",
        tmp_path,
        OCF_EXIT_REASON_PREFIX="REASON>",
        config=str(tmp_path / "nope.xml"),
    )
    assert res.returncode == 5
    assert any(ln.startswith("REASON>") for ln in res.stderr.splitlines())


def test_unknown_and_missing_action(tmp_path: Path) -> None:
    assert run_agent("frobnicate", tmp_path).returncode == 3
    res = subprocess.run(
        [PY, str(LAUNCHER)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert res.returncode == 2


def test_reload_agent(tmp_path: Path, config: Path) -> None:
    res = run_agent(
        "reload-agent",
        tmp_path,
        config=str(config),
        hypervisor="test:///default",
        shutdown_timeout="20",
        health_timeout="3",
    )
    assert res.returncode == 0
    # never 6 from reload-agent: Pacemaker would stop the guest everywhere; the reason is
    # printed, and the next monitor shows it (190)
    res = run_agent("reload-agent", tmp_path, config=str(config), health_timeout="zero")
    assert res.returncode == 0
    assert "health_timeout" in res.stderr


@pytest.mark.parametrize(
    "action",
    ["monitor", "start", "stop", "validate-all", "migrate_to", "migrate_from", "reload-agent"],
)
def test_no_traceback_on_garbage_environment(tmp_path: Path, action: str) -> None:
    env = {
        b"PATH": b"/usr/bin:/bin",
        b"HA_RSCTMP": str(tmp_path).encode(),
        b"HA_LOGFACILITY": b"bogus\xff",
        b"OCF_RESKEY_config": b"/tmp/\xff\xfe/x.xml",
        b"OCF_RESKEY_CRM_meta_timeout": b"soon",
        b"OCF_RESKEY_CRM_meta_interval": b"-x",
        b"OCF_CHECK_LEVEL": b"deep",
        b"OCF_RESKEY_hypervisor": b"\xff://",
        b"OCF_RESKEY_migrateport": b"\xff",
        b"OCF_RESOURCE_INSTANCE": b"../../etc/x",
        b"OCF_RESKEY_CRM_meta_migrate_target": b"",
    }
    res = subprocess.run(
        [PY, str(LAUNCHER), action], capture_output=True, env=env, check=False, timeout=60
    )
    err = res.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err
    if action in ("monitor", "reload-agent"):  # never the fatal 6 (see docs/agent.md)
        assert res.returncode in (0, 1, 5, 7, 190), err
    else:
        assert res.returncode in (1, 2, 5, 6, 7), err
    assert "ocf-exit-reason:" in err or res.returncode == 7
