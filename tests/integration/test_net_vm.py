"""Bond topologies need a kernel with bonding: this machine's has none, so one QEMU boot
of Debian's kernel (fetched with apt-get download, unpacked, not installed) runs
net_vm_guest.py inside. The tests below read what it wrote.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

GUEST_SCRIPT = Path(__file__).with_name("net_vm_guest.py")


# ---------------------------------------------------------------------------
# host side (pytest)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vm() -> Iterator[dict[str, Any]]:
    from kvmha.netcfg import kernel, vm

    if os.geteuid() != 0:
        pytest.fail("the integration tests run as root (scripts/test.sh)")
    k = kernel.ensure_kernel()
    t0 = time.monotonic()
    run, data = vm.run_in_vm(
        k,
        ["/usr/bin/python3", "-I", "{xfer}/net_vm_guest.py", "{xfer}"],
        files={"net_vm_guest.py": GUEST_SCRIPT.read_bytes()},
        progress=lambda m: print(f"[{time.monotonic() - t0:6.1f}s] {m}", flush=True),
        timeout=900,
        collect=lambda x: json.loads((x / "vm.json").read_text())
        if (x / "vm.json").exists() else None,
    )  # fmt: skip
    if data is None:
        pytest.fail(f"guest gave no result (rc {run.rc}):\n" + "\n".join(run.console[-40:]))
    data["elapsed_s"] = run.elapsed_s
    yield data


def _bridge(vm: dict[str, Any], scenario: str) -> dict[str, Any]:
    assert scenario not in vm["errors"], vm["errors"][scenario]
    (b,) = vm["check"][scenario]["bridges"]
    return b  # type: ignore[no-any-return]


def _codes(b: dict[str, Any]) -> set[str]:
    return {f["code"] for f in b["findings"]}


@pytest.mark.parametrize(
    ("mode", "verdict", "code"),
    [
        (0, "incompatible", "bond-mode-balance-rr"),
        (1, "ok", "bond-mode-active-backup"),
        (2, "ok", "bond-mode-balance-xor"),
        (3, "warning", "bond-mode-broadcast"),
        (4, "warning", "bond-lacp-no-partner"),  # plain veth peers: no LACP partner
        (5, "incompatible", "bond-mode-balance-tlb"),
        (6, "incompatible", "bond-mode-balance-alb"),
    ],
)
def test_check_every_mode_under_a_bridge(vm: dict[str, Any], mode: int, verdict: str,
                                         code: str) -> None:  # fmt: skip
    b = _bridge(vm, f"mode{mode}")
    assert b["verdict"] == verdict, b["findings"]
    assert code in _codes(b)
    bond = next(e for e in b["stack"] if e["name"] == "bond0")
    assert bond["bond"]["mode"] == mode and bond["bond"]["miimon"] == 100
    slaves = [e for e in b["stack"] if e["role"] == "slave"]
    assert [s["name"] for s in slaves] == ["e0", "e1"]
    assert all(s["bond_slave"]["mii_status"] == "up" for s in slaves)
    if mode == 1:
        assert bond["bond"]["active_slave"] in ("e0", "e1")
    if mode == 4:
        assert bond["bond"]["ad"]["partner_mac"] == "00:00:00:00:00:00"


def test_check_bond_vlan_bridge(vm: dict[str, Any]) -> None:
    ok = _bridge(vm, "vlan-mode1")
    assert ok["verdict"] == "ok", ok["findings"]
    assert [(e["name"], e["role"]) for e in ok["stack"][:3]] == [
        ("br0", "bridge"), ("bond0.100", "port"), ("bond0", "lower"),
    ]  # fmt: skip
    assert ok["stack"][1]["vlan_id"] == 100
    bad = _bridge(vm, "vlan-mode6")
    assert bad["verdict"] == "incompatible"
    alb = next(f for f in bad["findings"] if f["code"] == "bond-mode-balance-alb")
    assert "through bond0.100" in alb["message"]


def test_check_vlan_filtering_bridge(vm: dict[str, Any]) -> None:
    b = _bridge(vm, "vlan-filtering-mode1")
    assert b["verdict"] == "ok" and b["stack"][0]["vlan_filtering"] is True


def test_check_arp_monitoring(vm: dict[str, Any]) -> None:
    b = _bridge(vm, "arp-monitor")
    assert b["verdict"] == "warning" and "bond-arp-monitor" in _codes(b)
    bond = next(e for e in b["stack"] if e["name"] == "bond0")
    assert bond["bond"]["arp_interval"] == 200
    assert bond["bond"]["arp_ip_target"] == ["10.0.0.254"]


def test_check_no_monitoring_and_single_slave(vm: dict[str, Any]) -> None:
    assert "bond-no-link-monitor" in _codes(_bridge(vm, "no-monitor"))
    b = _bridge(vm, "single-slave")
    assert b["verdict"] == "warning" and "bond-single-slave" in _codes(b)


# What the probe measured on Debian's 6.1 kernel, each mode against its designed switch.
PROBE_EXPECT = {0: "pass", 1: "pass", 2: "pass", 3: "warn", 4: "pass", 5: "fail", 6: "fail"}


def _probe(vm: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["mode"]: r for r in vm["probe"]["results"]}


@pytest.mark.parametrize("mode", range(7))
def test_probe_designed_switch(vm: dict[str, Any], mode: int) -> None:
    r = _probe(vm)[mode]
    assert r["switch"] == r["designed_switch"]
    assert r["verdict"] == PROBE_EXPECT[mode], r["evidence"]["issues"]
    ev = r["evidence"]
    assert ev["bond_ready"] and ev["failover"]
    phases = [p["phase"] for p in ev["phases"]]
    assert phases[-1] == "after failover all flows" and any(p.startswith("soak") for p in phases)
    if mode in (5, 6):
        assert any("guest 10.0.0.1" in i and "source MAC" in i for i in ev["issues"])
    if mode == 3:
        assert any("duplicate replies" in i for i in ev["issues"])
    if mode == 4:
        assert ev["bond_state"]["ad_partner_mac"] not in (None, "00:00:00:00:00:00")


@pytest.mark.parametrize("mode", range(7))
def test_probe_agrees_with_check(vm: dict[str, Any], mode: int) -> None:
    """check ran on the probe's own host namespace once the bond was ready.

    pass <-> ok, warn <-> warning, fail <-> incompatible. Mode 0 is the one case where
    they differ by design: with the static LAG it needs, balance-rr passes at L2; check
    says incompatible because every reference rejects it under a bridge and because a
    static LAG is something check cannot see (with plain ports it loses everything).
    """
    r = _probe(vm)[mode]
    got = r["evidence"]["check"]["verdict"]
    if mode == 0:
        assert (r["verdict"], got) == ("pass", "incompatible")
        assert "bond-mode-balance-rr" in r["evidence"]["check"]["codes"]
        return
    assert r["evidence"]["check_agrees"], (r["verdict"], got)


def test_nothing_left_behind(vm: dict[str, Any]) -> None:
    assert vm["namespaces_left"] == []


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupted_probe_leaves_no_namespace(vm: dict[str, Any], sig: str) -> None:
    r = vm["interrupt"][sig]
    assert r["seen"] > 0, "the probe was interrupted before it built anything"
    assert r["rc"] != 0 and r["left"] == []


def test_ctrl_c_during_qemu_probe_stops_qemu() -> None:
    """Ctrl-C while the probe boots its kernel: QEMU is killed, the run directory goes."""
    import signal
    import subprocess

    from kvmha.netcfg import kernel

    k = kernel.ensure_kernel()
    runs = kernel.DEFAULT_CACHE / "runs"
    before = set(os.listdir(runs)) if runs.is_dir() else set()
    cli = (
        "from kvmha.tools.cli import Group; "
        "from kvmha.tools.net_cli import net; "
        "Group(name='kvmha', commands={'net': net})()"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", cli, "net", "probe", "--mode", "1", "--kernel", str(k.vmlinuz)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip
    mine: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not mine and p.poll() is None:
        mine = (set(os.listdir(runs)) if runs.is_dir() else set()) - before
        time.sleep(0.1)
    if not mine:
        p.kill()
        pytest.fail("the probe never created its run directory: " + p.communicate()[1])
    time.sleep(3)  # QEMU is up and booting
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err
    for d in mine:
        assert not (runs / d).exists()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert d.encode() not in cmd, f"process {pid} still runs for {d}"
