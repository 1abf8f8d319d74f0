"""Bridges and everything under them: ports, bonds, their slaves, VLANs and their lowers."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from kvmha.netcfg.links import BOND_MODES, BRPORT_STATE, LACP_RATE, MII, XMIT_HASH, Link, Snapshot

# Kinds whose IFLA_LINK is the device they sit on (in the same namespace).
STACKED_KINDS = ("vlan", "macvlan", "macvtap", "ipvlan")


@dataclasses.dataclass
class Entry:
    link: Link
    role: str  # bridge, port, slave, lower
    parent: Optional[Link]
    depth: int
    path: tuple[str, ...]  # names from the bridge down to this link


def children(
    snap: Snapshot, link: Link, by_master: dict[int, list[Link]]
) -> list[tuple[Link, str]]:
    out: list[tuple[Link, str]] = []
    role = "port" if link.kind == "bridge" else "slave"
    for c in sorted(by_master.get(link.index, []), key=lambda x: x.name):
        out.append((c, role))
    if link.kind in STACKED_KINDS and link.lower_netnsid is None and link.lower in snap.links:
        out.append((snap.links[link.lower], "lower"))
    return out


def master_map(snap: Snapshot) -> dict[int, list[Link]]:
    by_master: dict[int, list[Link]] = {}
    for link in snap.links.values():
        if link.master:
            by_master.setdefault(link.master, []).append(link)
    return by_master


def walk(
    snap: Snapshot, bridge: Link, by_master: dict[int, list[Link]] | None = None
) -> list[Entry]:
    """The bridge, then depth first everything under it (each link once)."""
    by_master = master_map(snap) if by_master is None else by_master
    out = [Entry(bridge, "bridge", None, 0, (bridge.name,))]
    seen = {bridge.index}

    def visit(link: Link, depth: int, path: tuple[str, ...]) -> None:
        for child, role in children(snap, link, by_master):
            if child.index in seen:
                continue
            seen.add(child.index)
            p = (*path, child.name)
            out.append(Entry(child, role, link, depth + 1, p))
            visit(child, depth + 1, p)

    visit(bridge, 0, (bridge.name,))
    return out


def entry_dict(e: Entry, snap: Snapshot) -> dict[str, Any]:
    """What the stack shows for one link in --json."""
    link = e.link
    d: dict[str, Any] = {
        "name": link.name,
        "kind": link.kind,
        "role": e.role,
        "parent": e.parent.name if e.parent else None,
        "depth": e.depth,
        "mtu": link.mtu,
        "operstate": link.operstate,
        "admin_up": link.admin_up,
        "address": link.address,
    }
    if link.bond is not None:
        b = link.bond
        active = snap.links.get(b.active_slave) if b.active_slave else None
        d["bond"] = {
            "mode": b.mode,
            "mode_name": BOND_MODES.get(b.mode, str(b.mode)),
            "miimon": b.miimon,
            "arp_interval": b.arp_interval,
            "arp_ip_target": b.arp_ip_target,
            "xmit_hash_policy": XMIT_HASH.get(b.xmit_hash_policy, b.xmit_hash_policy)
            if b.xmit_hash_policy is not None
            else None,
            "lacp_rate": LACP_RATE.get(b.lacp_rate, b.lacp_rate)
            if b.lacp_rate is not None
            else None,
            "active_slave": active.name if active else None,
        }
        if b.mode == 4:
            d["bond"]["ad"] = {
                "aggregator": b.ad_aggregator,
                "num_ports": b.ad_num_ports,
                "partner_mac": b.ad_partner_mac,
                "partner_key": b.ad_partner_key,
            }
    if link.bond_slave is not None:
        s = link.bond_slave
        d["bond_slave"] = {
            "state": {0: "active", 1: "backup"}.get(s.state, s.state)
            if s.state is not None
            else None,
            "mii_status": MII.get(s.mii_status, s.mii_status) if s.mii_status is not None else None,
            "link_failure_count": s.link_failure_count,
            "aggregator_id": s.ad_aggregator_id,
        }
    if link.vlan_id is not None:
        d["vlan_id"] = link.vlan_id
    if link.kind == "bridge":
        d["vlan_filtering"] = link.vlan_filtering
        d["stp_state"] = link.stp_state
    if link.brport_state is not None:
        d["port_state"] = BRPORT_STATE.get(link.brport_state, str(link.brport_state))
    return d
