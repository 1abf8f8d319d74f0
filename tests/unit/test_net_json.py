"""JSON shapes, pyroute2 message decoding, the probe's judgement, input parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.net_topo import bridged_bond

from kvmha.errors import UsageError
from kvmha.netcfg import probe
from kvmha.netcfg.check import check_snapshot, render_table
from kvmha.netcfg.links import Snapshot, link_from_msg
from kvmha.netcfg.vm import _cpio_newc


class Nla(dict):  # type: ignore[type-arg]
    """Enough of a pyroute2 message: get_attr() and item access."""

    def get_attr(self, name: str) -> Any:
        return self.get(name)


def bond_msg(arp_targets: Any) -> Nla:
    data = Nla(
        IFLA_BOND_MODE=4, IFLA_BOND_MIIMON=100, IFLA_BOND_ARP_INTERVAL=0,
        IFLA_BOND_ARP_IP_TARGET=arp_targets, IFLA_BOND_XMIT_HASH_POLICY=2,
        IFLA_BOND_AD_LACP_RATE=1, IFLA_BOND_ACTIVE_SLAVE=None,
        IFLA_BOND_AD_INFO=Nla(IFLA_BOND_AD_INFO_AGGREGATOR=1, IFLA_BOND_AD_INFO_NUM_PORTS=2,
                              IFLA_BOND_AD_INFO_PARTNER_MAC="02:00:00:00:00:c0"),
    )  # fmt: skip
    return Nla(
        index=7, flags=1, IFLA_IFNAME="bond0", IFLA_MTU=1500, IFLA_OPERSTATE="UP",
        IFLA_ADDRESS="02:00:00:00:00:a0", IFLA_MASTER=9,
        IFLA_LINKINFO=Nla(IFLA_INFO_KIND="bond", IFLA_INFO_DATA=data,
                          IFLA_INFO_SLAVE_KIND="bridge",
                          IFLA_INFO_SLAVE_DATA=Nla(IFLA_BRPORT_STATE=3)),
    )  # fmt: skip


@pytest.mark.parametrize(
    "targets", [["192.0.2.1"], "192.0.2.1", [("IFLA_BOND_ARP_IP_TARGET", "192.0.2.1")]]
)
def test_link_from_bond_message(targets: Any) -> None:
    link = link_from_msg(bond_msg(targets))
    assert link.kind == "bond" and link.master == 9 and link.brport_state == 3
    assert link.bond is not None
    assert link.bond.mode == 4 and link.bond.ad_partner_mac == "02:00:00:00:00:c0"
    assert link.bond.arp_ip_target == ["192.0.2.1"]


def test_link_without_kind_is_a_device() -> None:
    link = link_from_msg(Nla(index=2, flags=0, IFLA_IFNAME="eno1", IFLA_MTU=1500))
    assert link.kind == "device" and not link.admin_up


def test_check_json_shape() -> None:
    rep = json.loads(json.dumps(check_snapshot(bridged_bond(6))))
    assert set(rep) >= {"bridges"}
    (b,) = rep["bridges"]
    assert set(b) == {"name", "verdict", "findings", "stack"}
    assert b["verdict"] in ("ok", "warning", "incompatible")
    for f in b["findings"]:
        assert {"severity", "code", "message", "reference"} <= set(f)
    bond = next(e for e in b["stack"] if e["name"] == "bond0")
    assert bond["bond"]["mode_name"] == "balance-alb"
    assert bond["bond"]["miimon"] == 100
    assert next(e for e in b["stack"] if e["name"] == "eth0")["bond_slave"]["mii_status"] == "up"


def test_snapshot_round_trip() -> None:
    snap = bridged_bond(4)
    again = Snapshot.from_dict(json.loads(json.dumps(snap.to_dict())))
    assert check_snapshot(again) == check_snapshot(snap)


def test_table_for_people() -> None:
    text = render_table(check_snapshot(bridged_bond(5)))
    assert "br0" in text and "incompatible" in text and "bond-mode-balance-tlb" in text
    assert "ref:" in text


@pytest.mark.parametrize(
    ("text", "want"),
    [("all", [0, 1, 2, 3, 4, 5, 6]), ("4", [4]), ("active-backup,6", [1, 6])],
)
def test_parse_modes(text: str, want: list[int]) -> None:
    assert probe.parse_modes(text) == want


@pytest.mark.parametrize("text", ["7", "-1", "lacp", ""])
def test_parse_modes_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="unknown bond mode"):
        probe.parse_modes(text)


def test_parse_switch() -> None:
    assert probe.parse_switch("designed") is None
    assert probe.parse_switch("all") == ["independent", "static", "lacp"]
    with pytest.raises(UsageError):
        probe.parse_switch("cisco")


def _phase(**kw: Any) -> dict[str, Any]:
    ph: dict[str, Any] = {
        "phase": "cold guests->peers",
        "flows": [{"flow": "g->p", "sent": 20, "lost": 0, "dups": 0}],
        "wrong_src_macs": {}, "looped_own_frames": {}, "host_fdb_guests": {}, "peer_arp": {},
    }  # fmt: skip
    ph.update(kw)
    return ph


@pytest.mark.parametrize(
    ("phase", "want"),
    [
        (_phase(), "pass"),
        (_phase(flows=[{"flow": "g->p", "sent": 20, "lost": 20, "dups": 0}]), "fail"),
        (_phase(flows=[{"flow": "g->p", "sent": 20, "lost": 0, "dups": 20}]), "warn"),
        (_phase(wrong_src_macs={"10.0.0.10": {"02:00:00:00:00:a1": 3}}), "fail"),
        (_phase(host_fdb_guests={"52:54:00:00:00:10": ["bond0"]}), "fail"),
    ],
)
def test_probe_judge(phase: dict[str, Any], want: str) -> None:
    r: dict[str, Any] = {"mode": 1, "evidence": {"phases": [phase], "bond_ready": True}}
    probe.judge(r)
    assert r["verdict"] == want
    assert bool(r["evidence"]["issues"]) == (want != "pass")


def test_probe_judge_lacp_without_partner_warns() -> None:
    r: dict[str, Any] = {
        "mode": 4,
        "evidence": {"phases": [_phase()], "bond_state": {"ad_partner_mac": "00:00:00:00:00:00"}},
    }
    probe.judge(r)
    assert r["verdict"] == "warn"


def test_probe_report_table() -> None:
    rep = {"kernel": "6.1.0-56-amd64", "total_s": 1.0, "results": [
        {"mode": 5, "mode_name": "balance-tlb", "switch": "independent",
         "designed_switch": "independent", "verdict": "fail",
         "evidence": {"issues": ["guest MAC rewritten"], "timings": {"total_s": 30},
                      "check": {"verdict": "incompatible"}}}]}  # fmt: skip
    text = probe.render_table(rep)
    assert "6.1.0-56-amd64" in text and "independent*" in text and "incompatible" in text


def test_cpio_newc_layout() -> None:
    data = _cpio_newc([("init", 0o100755, b"#!/bin/sh\n", (0, 0))])
    assert data.startswith(b"070701") and b"TRAILER!!!" in data
    assert len(data) % 4 == 0
