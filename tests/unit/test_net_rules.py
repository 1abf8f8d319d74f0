"""kvmha net check rules on fixture link dumps (no kernel needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.net_topo import Topo, bridged_bond

from kvmha.netcfg import rules
from kvmha.netcfg.check import check_snapshot, exit_code
from kvmha.netcfg.links import Snapshot

DOCS = Path(__file__).resolve().parents[2] / "docs" / "net.md"


def report(snap: Snapshot) -> dict[str, Any]:
    return check_snapshot(snap)


def codes(rep: dict[str, Any], bridge: str = "br0") -> dict[str, str]:
    b = next(x for x in rep["bridges"] if x["name"] == bridge)
    return {f["code"]: f["severity"] for f in b["findings"]}


def verdict(rep: dict[str, Any], bridge: str = "br0") -> str:
    return str(next(x for x in rep["bridges"] if x["name"] == bridge)["verdict"])


@pytest.mark.parametrize(
    ("mode", "want", "code"),
    [
        (0, "incompatible", "bond-mode-balance-rr"),
        (1, "ok", "bond-mode-active-backup"),
        (2, "ok", "bond-mode-balance-xor"),
        (3, "warning", "bond-mode-broadcast"),
        (4, "ok", "bond-lacp-partner"),
        (5, "incompatible", "bond-mode-balance-tlb"),
        (6, "incompatible", "bond-mode-balance-alb"),
    ],
)
def test_mode_under_bridge(mode: int, want: str, code: str) -> None:
    rep = report(bridged_bond(mode))
    assert verdict(rep) == want
    assert code in codes(rep)
    assert exit_code(rep) == {"ok": 0, "warning": 1, "incompatible": 2}[want]


def test_mode3_says_where_the_references_disagree() -> None:
    rep = report(bridged_bond(3))
    f = next(f for f in rep["bridges"][0]["findings"] if f["code"] == "bond-mode-broadcast")
    assert "disagree" in f["message"]
    assert "RHV" in f["reference"] and "RHEL" in f["reference"]


def test_lacp_without_partner() -> None:
    rep = report(bridged_bond(4, ad_partner_mac="00:00:00:00:00:00", ad_num_ports=1))
    assert verdict(rep) == "warning"
    assert codes(rep)["bond-lacp-no-partner"] == "warning"


def test_lacp_slave_outside_aggregator() -> None:
    snap = bridged_bond(4)
    eth1 = next(x for x in snap.links.values() if x.name == "eth1")
    assert eth1.bond_slave is not None
    eth1.bond_slave.ad_aggregator_id = 2
    assert "bond-lacp-ports-outside-aggregator" in codes(report(snap))


def test_arp_monitoring_under_bridge() -> None:
    rep = report(bridged_bond(1, miimon=0, arp_interval=200, arp_ip_target=["192.0.2.1"]))
    assert codes(rep)["bond-arp-monitor"] == "warning"
    assert verdict(rep) == "warning"


def test_no_link_monitoring() -> None:
    rep = report(bridged_bond(1, miimon=0))
    assert codes(rep)["bond-no-link-monitor"] == "warning"


def test_single_slave() -> None:
    rep = report(bridged_bond(1, nslaves=1))
    assert codes(rep)["bond-single-slave"] == "warning"


def test_slave_down() -> None:
    snap = bridged_bond(1)
    eth1 = next(x for x in snap.links.values() if x.name == "eth1")
    assert eth1.bond_slave is not None
    eth1.bond_slave.mii_status = 2
    eth1.operstate = "DOWN"
    rep = report(snap)
    assert codes(rep)["bond-slave-down"] == "warning"


def test_bridge_port_down() -> None:
    t = Topo()
    br = t.bridge()
    t.port(t.add("v0", "veth"), br)
    t.port(t.add("v1", "veth", operstate="LOWERLAYERDOWN"), br, state=0)
    rep = report(t.snap())
    assert verdict(rep) == "warning"
    f = next(f for f in rep["bridges"][0]["findings"] if f["code"] == "bridge-port-down")
    assert f["link"] == "v1"


def test_bridge_ok_has_a_reason() -> None:
    t = Topo()
    br = t.bridge()
    t.port(t.add("v0", "veth"), br)
    rep = report(t.snap())
    assert verdict(rep) == "ok"
    assert rep["bridges"][0]["findings"][0]["code"] == "bridge-ok"


def test_mtu_mismatch_between_ports() -> None:
    t = Topo()
    br = t.bridge(mtu=1500)
    t.port(t.add("v0", "veth", mtu=1500), br)
    t.port(t.add("v1", "veth", mtu=9000), br)
    assert codes(report(t.snap()))["mtu-bridge-ports"] == "warning"


def test_bond_vlan_bridge_stack() -> None:
    """bond -> VLAN -> bridge: the bond's mode counts, and the VLAN is in the stack."""
    t = Topo()
    br = t.bridge("br100")
    bond = t.bond(6)
    vlan = t.add("bond0.100", "vlan", vlan_id=100, lower=bond.index, mtu=9000)
    t.port(vlan, br)
    rep = report(t.snap())
    assert verdict(rep, "br100") == "incompatible"
    b = rep["bridges"][0]
    names = [(e["name"], e["role"]) for e in b["stack"]]
    assert names == [
        ("br100", "bridge"),
        ("bond0.100", "port"),
        ("bond0", "lower"),
        ("eth0", "slave"),
        ("eth1", "slave"),
    ]
    alb = next(f for f in b["findings"] if f["code"] == "bond-mode-balance-alb")
    assert "through bond0.100" in alb["message"]
    # the VLAN (9000) is bigger than the bond under it (1500)
    assert "mtu-stack" in codes(rep, "br100")


def test_bond_not_under_a_bridge_is_not_reported() -> None:
    t = Topo()
    t.bond(6)
    assert report(t.snap())["bridges"] == []


def test_table_is_well_formed() -> None:
    seen = set()
    for r in rules.RULES:
        assert r.code not in seen
        seen.add(r.code)
        assert r.severity in rules.SEVERITY_RANK
        assert r.scope in ("bridge", "port", "bond", "any")
        assert r.reference and r.message


def test_every_rule_is_documented() -> None:
    text = DOCS.read_text()
    for r in rules.RULES:
        assert f"`{r.code}`" in text, r.code
    assert "`bridge-ok`" in text
