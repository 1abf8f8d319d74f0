"""Link dumps built in a few lines, for the network checker's tests (no kernel needed)."""

from __future__ import annotations

from typing import Any

from kvmha.netcfg.links import Bond, BondSlave, Link, Snapshot

PARTNER = "02:00:00:00:00:c0"


class Topo:
    """A small builder of link dumps."""

    def __init__(self) -> None:
        self.links: dict[int, Link] = {}

    def add(self, name: str, kind: str = "device", **kw: Any) -> Link:
        idx = len(self.links) + 1
        kw.setdefault("operstate", "UP")
        kw.setdefault("admin_up", True)
        link = Link(index=idx, name=name, kind=kind, **kw)
        self.links[idx] = link
        return link

    def bridge(self, name: str = "br0", **kw: Any) -> Link:
        return self.add(name, "bridge", stp_state=0, vlan_filtering=False, **kw)

    def port(self, link: Link, bridge: Link, state: int = 3) -> Link:
        link.master = bridge.index
        link.slave_kind = "bridge"
        link.brport_state = state
        return link

    def bond(self, mode: int, nslaves: int = 2, name: str = "bond0", **kw: Any) -> Link:
        bkw: dict[str, Any] = {"miimon": 100}
        if mode == 4:
            bkw.update(ad_aggregator=1, ad_num_ports=nslaves, ad_partner_mac=PARTNER)
        bkw.update(kw)
        bond = self.add(name, "bond", bond=Bond(mode=mode, **bkw))
        for i in range(nslaves):
            self.add(
                f"eth{i}",
                master=bond.index,
                slave_kind="bond",
                bond_slave=BondSlave(state=0 if i == 0 else 1, mii_status=0, ad_aggregator_id=1),
            )
        return bond

    def snap(self) -> Snapshot:
        return Snapshot("fixture", dict(self.links))


def bridged_bond(mode: int, **kw: Any) -> Snapshot:
    t = Topo()
    br = t.bridge()
    t.port(t.bond(mode, **kw), br)
    t.port(t.add("vnet0", "tun"), br)
    return t.snap()
