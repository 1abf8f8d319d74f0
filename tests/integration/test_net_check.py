"""kvmha net check on real topologies built in network namespaces on this machine.

This kernel has bridge and veth (no bonding, no 802.1q): bridges over veths, a bridge
with a port that is down, MTU mismatches. Bond topologies are in test_net_vm.py.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import click
import pytest
from click.testing import CliRunner

from kvmha.netcfg import nsutil
from kvmha.netcfg.check import check
from kvmha.tools.cli import Group
from kvmha.tools.net_cli import net

NS = f"kn-t{os.getpid()}"


@click.group(cls=Group)
def kvmha() -> None:
    pass


kvmha.add_command(net)


def _idx(r: Any, name: str) -> int:
    return int(r.link_lookup(ifname=name)[0])


@pytest.fixture(scope="module")
def topo() -> Iterator[str]:
    """br-ok: two veth ports; br-down: one port whose peer is down; br-mtu: ports with
    MTU 1500 and 9000."""
    if os.geteuid() != 0:
        pytest.fail("the integration tests run as root (scripts/test.sh)")
    nsutil.remove(NS)
    nsutil.create(NS)
    try:
        r = nsutil.iproute(NS)
        try:
            for br in ("br-ok", "br-down", "br-mtu"):
                r.link("add", ifname=br, kind="bridge", br_stp_state=0, br_forward_delay=0)
            plan = {"a0": "br-ok", "a1": "br-ok", "d0": "br-down", "d1": "br-down",
                    "m0": "br-mtu", "m1": "br-mtu"}  # fmt: skip
            for port, br in plan.items():
                r.link("add", ifname=port, kind="veth", peer={"ifname": port + "p"})
                r.link("set", index=_idx(r, port), master=_idx(r, br))
            r.link("set", index=_idx(r, "m1"), mtu=9000)
            r.link("set", index=_idx(r, "m1p"), mtu=9000)
            for port in plan:
                r.link("set", index=_idx(r, port), state="up")
                if port != "d1":  # d1's peer stays down: d1 has no carrier
                    r.link("set", index=_idx(r, port + "p"), state="up")
            for br in ("br-ok", "br-down", "br-mtu"):
                r.link("set", index=_idx(r, br), state="up")
        finally:
            r.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            rep = check(NS)
            b = {x["name"]: x for x in rep["bridges"]}
            if all(e["operstate"] == "UP" for e in b["br-ok"]["stack"]):
                break
            time.sleep(0.1)
        yield NS
    finally:
        nsutil.remove(NS)


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner(mix_stderr=False).invoke(kvmha, list(args))
    return res.exit_code, res.stdout + res.stderr


def _bridges(ns: str) -> dict[str, dict[str, Any]]:
    rc, out = _run("net", "check", "--netns", ns, "--json")
    assert rc in (0, 1, 2), out
    return {b["name"]: b for b in json.loads(out)["bridges"]}


def test_bridge_over_veths_is_ok(topo: str) -> None:
    b = _bridges(topo)["br-ok"]
    assert b["verdict"] == "ok", b["findings"]
    assert [(e["name"], e["kind"], e["role"]) for e in b["stack"]] == [
        ("br-ok", "bridge", "bridge"),
        ("a0", "veth", "port"),
        ("a1", "veth", "port"),
    ]
    assert all(e["port_state"] == "forwarding" for e in b["stack"][1:])


def test_bridge_with_a_port_down(topo: str) -> None:
    b = _bridges(topo)["br-down"]
    assert b["verdict"] == "warning"
    (f,) = [f for f in b["findings"] if f["code"] == "bridge-port-down"]
    assert f["link"] == "d1" and "d1" in f["message"]


def test_mtu_mismatch(topo: str) -> None:
    b = _bridges(topo)["br-mtu"]
    assert b["verdict"] == "warning"
    assert "mtu-bridge-ports" in {f["code"] for f in b["findings"]}


def test_exit_code_and_table(topo: str) -> None:
    rc, out = _run("net", "check", "--netns", topo)
    assert rc == 1  # warnings, nothing incompatible
    assert "br-down" in out and "bridge-port-down" in out and "ref:" in out


def test_host_itself_is_readable() -> None:
    rc, out = _run("net", "check", "--json")
    assert rc in (0, 1, 2), out
    assert "bridges" in json.loads(out)


def test_100_links_are_all_read_in_bounded_time() -> None:
    """A host with 100 links: every link and bridge is read and judged, and the CLI ends
    well inside a generous bound. The speed (the issue's 0.5 s budget) is measured by
    bench/net_check.py, not asserted here: a loaded 2-core machine must not fail it."""
    import importlib.util
    import subprocess
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "net_check.py"
    spec = importlib.util.spec_from_file_location("bench_net_check", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    ns = f"kn-b{os.getpid()}"
    try:
        bench.build_links(ns, 100)
        r = subprocess.run(
            ["/usr/bin/python3", "-I", "-c", bench.CLI, "check", "--netns", ns, "--json"],
            capture_output=True, text=True, cwd="/", timeout=60, check=False,
        )  # fmt: skip
        assert r.returncode in (0, 1), r.stderr  # warnings (ports down), nothing incompatible
        rep = json.loads(r.stdout)
        assert rep["links"] >= 100
        names = {b["name"] for b in rep["bridges"]}
        assert {f"br{i}" for i in range(10)} <= names, names
        assert all(b["verdict"] in ("ok", "warning") for b in rep["bridges"]), rep["bridges"]
        down = [b["name"] for b in rep["bridges"] if any(
            f["code"] == "bridge-port-down" for f in b["findings"])]  # fmt: skip
        assert "br0" in down  # every fourth port's peer is down
    finally:
        nsutil.remove(ns)
