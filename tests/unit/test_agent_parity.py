"""Drop-in parity with VirtualDomain: migrate_options mapped to libvirt (post-copy with a
real switch, parallel connections), the VirtualDomain parameters Guest refuses rather than
ignores, the start health grace, guest-exec that outlives its timeout is killed."""

from __future__ import annotations

import importlib
import json
import types
from pathlib import Path
from typing import Any

import pytest
from support.agent_env import agent_env, write_test_domain

from kvmha.agents import guest, health, migration, ocf
from kvmha.agents import guest_params as gp
from kvmha.agents.ocf import Env

LV = types.SimpleNamespace(
    VIR_MIGRATE_PARAM_URI="migrate_uri",
    VIR_MIGRATE_PARAM_BANDWIDTH="bandwidth",
    VIR_MIGRATE_PARAM_LISTEN_ADDRESS="listen_address",
    VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS="parallel.connections",
    libvirtError=RuntimeError,
)


def params(**kw: str) -> tuple[gp.Params, list[str]]:
    env = {"OCF_RESKEY_config": "/x.xml"}
    env.update({f"OCF_RESKEY_{k}": v for k, v in kw.items()})
    return gp.parse(Env(env))


def test_parallel_connections_and_postcopy_flags() -> None:
    p, errors = params(
        migrate_options="--parallel --parallel-connections=4 --postcopy --auto-converge "
        "--tls --compressed --postcopy-after-precopy"
    )
    assert errors == []
    flags, prm = migration.flags_and_params(p, "h2", LV)
    assert flags == 1 | 2 | 131072 | 32768 | 8192 | 65536 | 2048
    assert prm == {"parallel.connections": 4}
    assert migration.postcopy_switch(p) == (True, None)
    p, errors = params(migrate_options="--postcopy --postcopy-after=30")
    assert errors == [] and migration.postcopy_switch(p) == (False, 30.0)


@pytest.mark.parametrize(
    ("opts", "why"),
    [
        ("--postcopy-after-precopy", "need --postcopy"),
        ("--parallel-connections=4", "needs --parallel"),
        ("--parallel --parallel-connections=x", "unsupported option '--parallel-connections=x'"),
        ("--domain=foo", "unsupported option '--domain=foo'"),
        ("--copy-storage-all", "unsupported option '--copy-storage-all'"),
    ],
)
def test_migrate_options_refused_name_the_option(opts: str, why: str) -> None:
    _p, errors = params(migrate_options=opts)
    assert any(why in e for e in errors), errors


class Job:
    """A migration job's domain: jobStats as libvirt reports them, migrateStartPostCopy."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration
        self.switched = 0

    def jobStats(self) -> dict[str, int]:
        return {"memory_iteration": self.iteration}

    def migrateStartPostCopy(self, flags: int) -> None:
        self.switched += 1


def test_postcopy_switch_after_the_first_pass_or_a_time() -> None:
    log = ocf.Logger("t", {"HA_LOGFACILITY": "none"})
    job = Job(iteration=1)
    assert not migration.start_postcopy(job, "vm", LV, log, True, None, 1.0)
    assert job.switched == 0
    job.iteration = 2  # the first pass is done
    assert migration.start_postcopy(job, "vm", LV, log, True, None, 1.5)
    assert job.switched == 1
    job = Job(iteration=1)
    assert not migration.start_postcopy(job, "vm", LV, log, False, 10.0, 9.9)
    assert migration.start_postcopy(job, "vm", LV, log, False, 10.0, 10.0)
    assert job.switched == 1


@pytest.mark.parametrize(
    ("name", "value"), [("backingfile", "/b.qcow2"), ("stateless", "true"), ("copyindirs", "/d")]
)
@pytest.mark.parametrize("action", ["validate-all", "start"])
def test_virtualdomain_parameters_guest_lacks_are_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], name: str, value: str, action: str
) -> None:
    cfg = tmp_path / "vm.xml"
    cfg.write_text("<domain type='test'><name>kvmha-parity</name></domain>")
    env = {
        "OCF_RESKEY_config": str(cfg),
        "OCF_RESKEY_hypervisor": "test:///default",
        "HA_RSCTMP": str(tmp_path),
        "HA_LOGFACILITY": "none",
        f"OCF_RESKEY_{name}": value,
    }
    assert guest.main(["Guest", action], env) == ocf.ERR_CONFIGURED
    assert f"parameter {name}" in capfd.readouterr().err
    # stateless=false asks for nothing Guest lacks
    if name == "stateless":
        env[f"OCF_RESKEY_{name}"] = "false"
        assert guest.main(["Guest", "validate-all"], env) == ocf.SUCCESS


def test_guest_exec_that_times_out_is_killed_in_the_guest(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, Any]] = []

    def cmd(dom: Any, text: str, timeout: int, flags: int) -> str:
        req = json.loads(text)
        sent.append(req)
        if req["execute"] == "guest-exec" and req["arguments"]["path"] == "/bin/slow":
            return '{"return": {"pid": 77}}'
        if req["execute"] == "guest-exec":
            return '{"return": {"pid": 78}}'
        return '{"return": {"exited": false}}'

    fake = types.SimpleNamespace(qemuAgentCommand=cmd)
    real_import = importlib.import_module
    monkeypatch.setattr(
        importlib, "import_module", lambda n: fake if n == "libvirt_qemu" else real_import(n)
    )
    err = health.agent_exec(object(), ["/bin/slow"], 0, 0.3)
    assert err is not None and "did not finish" in err and "killed in the guest" in err
    kills = [r for r in sent if r["execute"] == "guest-exec" and r["arguments"]["path"] == "kill"]
    assert kills == [
        {"execute": "guest-exec", "arguments": {"path": "kill", "arg": ["-KILL", "77"]}}
    ]


def test_health_start_grace(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    libvirt = pytest.importorskip("libvirt")
    holder = libvirt.open("test:///default")
    cfg = write_test_domain(tmp_path, "kvmha-unit-grace")
    env = agent_env(
        tmp_path,
        cfg,
        {
            "OCF_RESOURCE_INSTANCE": "vm_grace",
            "OCF_RESKEY_health_tcp": "127.0.0.1:9",  # the discard port: nothing listens
            "OCF_RESKEY_health_timeout": "1",
            "OCF_RESKEY_health_start_grace": "600",
        },
    )
    deep = {"OCF_RESKEY_CRM_meta_interval": "60000", "OCF_CHECK_LEVEL": "10"}
    try:
        # with a grace the start does not wait for the failing health check ...
        assert guest.main(["Guest", "start"], env) == ocf.SUCCESS
        capfd.readouterr()
        # ... and a deep monitor within the grace reports it degraded, not failed
        assert guest.main(["Guest", "monitor"], {**env, **deep}) == ocf.DEGRADED
        assert "still starting" in capfd.readouterr().err
        # after the grace, the same failure is a failure
        state = next(tmp_path.glob("kvmha-Guest-vm_grace.state"))
        text = state.read_text()
        state.write_text(
            "\n".join(
                "started=1" if line.startswith("started=") else line for line in text.splitlines()
            )
            + "\n"
        )
        assert guest.main(["Guest", "monitor"], {**env, **deep}) == ocf.ERR_GENERIC
    finally:
        assert guest.main(["Guest", "stop"], env) == ocf.SUCCESS
        holder.close()
