"""validate-all as admins run it: through Pacemaker's crm_resource (no cluster needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kvmha.agents import guest_params

DOMAIN = (
    "<domain type='test'><name>vm1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
    "<os><type arch='x86_64'>hvm</type></os></domain>"
)


def crm_validate(*options: str) -> subprocess.CompletedProcess[str]:
    argv = [
        "crm_resource",
        "--validate",
        "--class",
        "ocf",
        "--provider",
        "kvmha",
        "--agent",
        "Guest",
    ]
    for opt in options:
        argv += ["--option", opt]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    p = tmp_path / "vm1.xml"
    p.write_text(DOMAIN)
    return p


def test_valid(config: Path) -> None:
    r = crm_validate(f"config={config}", "hypervisor=test:///default")
    assert r.returncode == 0, r.stdout + r.stderr


def cases(tmp: Path, config: Path) -> list[tuple[list[str], int, str]]:
    unreadable = tmp / "noperm" / "vm1.xml"
    notdomain = tmp / "net.xml"
    notdomain.write_text("<network><name>n</name></network>")
    garbage = tmp / "garbage.xml"
    garbage.write_text("this is not xml <")
    return [
        ([], 6, "config"),
        ([f"config={unreadable}"], 5, "config"),
        ([f"config={notdomain}", "hypervisor=test:///default"], 6, "domain"),
        ([f"config={garbage}", "hypervisor=test:///default"], 6, "config"),
        ([f"config={config}", "hypervisor=nosuch:///system"], 6, "hypervisor"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_config_and_uri_problems(tmp_path: Path, config: Path, case: int) -> None:
    options, code, word = cases(tmp_path, config)[case]
    r = crm_validate(*options)
    assert r.returncode == code, r.stdout + r.stderr
    assert word in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize(
    "param",
    [p for p in guest_params.PARAMS if p.kind in ("integer", "boolean")],
    ids=lambda p: p.name,
)
def test_bad_numeric_and_boolean_values(config: Path, param: guest_params.Param) -> None:
    bad = "twelve" if param.kind == "integer" else "maybe"
    r = crm_validate(f"config={config}", "hypervisor=test:///default", f"{param.name}={bad}")
    assert r.returncode == 6, r.stdout + r.stderr
    assert param.name in r.stdout + r.stderr
