"""The link stack as pyroute2 reports it, turned into plain, typed records.

Reading uses only ``get_attr``/``get_nested`` on RTM_GETLINK dump messages, which both
Debian 12's python3-pyroute2 0.7.2 and RHEL 9's package support. ``Link.from_dict`` and
``Link.to_dict`` make the records round-trip through JSON, so the rules can be tested on
fixture dumps without a kernel.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

from kvmha.netcfg import nsutil

BOND_MODES = {
    0: "balance-rr",
    1: "active-backup",
    2: "balance-xor",
    3: "broadcast",
    4: "802.3ad",
    5: "balance-tlb",
    6: "balance-alb",
}
MODE_NUMBERS = {v: k for k, v in BOND_MODES.items()}
XMIT_HASH = {
    0: "layer2",
    1: "layer3+4",
    2: "layer2+3",
    3: "encap2+3",
    4: "encap3+4",
    5: "vlan+srcmac",
}
LACP_RATE = {0: "slow", 1: "fast"}
# IFLA_BOND_SLAVE_MII_STATUS
MII = {0: "up", 1: "fail", 2: "down", 3: "back"}
# IFLA_BRPORT_STATE
BRPORT_STATE = {0: "disabled", 1: "listening", 2: "learning", 3: "forwarding", 4: "blocking"}
ZERO_MAC = "00:00:00:00:00:00"


@dataclasses.dataclass
class Bond:
    mode: int
    miimon: int = 0
    arp_interval: int = 0
    arp_ip_target: list[str] = dataclasses.field(default_factory=list)
    xmit_hash_policy: Optional[int] = None
    lacp_rate: Optional[int] = None
    active_slave: Optional[int] = None
    ad_aggregator: Optional[int] = None
    ad_num_ports: Optional[int] = None
    ad_partner_mac: Optional[str] = None
    ad_partner_key: Optional[int] = None

    @property
    def mode_name(self) -> str:
        return BOND_MODES.get(self.mode, f"mode-{self.mode}")


@dataclasses.dataclass
class BondSlave:
    state: Optional[int] = None  # 0 active, 1 backup
    mii_status: Optional[int] = None
    link_failure_count: Optional[int] = None
    perm_hwaddr: Optional[str] = None
    ad_aggregator_id: Optional[int] = None


@dataclasses.dataclass
class Link:
    index: int
    name: str
    kind: str  # bridge, bond, vlan, veth, ... or "device" (no IFLA_INFO_KIND: a NIC)
    mtu: int = 1500
    operstate: str = "UNKNOWN"
    admin_up: bool = False
    address: Optional[str] = None
    master: Optional[int] = None
    lower: Optional[int] = None  # IFLA_LINK in this namespace (VLAN, macvlan)
    lower_netnsid: Optional[int] = None  # IFLA_LINK_NETNSID: the lower end is elsewhere
    slave_kind: Optional[str] = None
    bond: Optional[Bond] = None
    bond_slave: Optional[BondSlave] = None
    vlan_id: Optional[int] = None
    vlan_filtering: Optional[bool] = None
    stp_state: Optional[int] = None
    brport_state: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Link:
        d = dict(d)
        if d.get("bond") is not None:
            d["bond"] = Bond(**d["bond"])
        if d.get("bond_slave") is not None:
            d["bond_slave"] = BondSlave(**d["bond_slave"])
        return cls(**d)


@dataclasses.dataclass
class Snapshot:
    netns: Optional[str]
    links: dict[int, Link]
    read_s: float = 0.0

    def by_name(self, name: str) -> Link | None:
        for link in self.links.values():
            if link.name == name:
                return link
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"netns": self.netns, "links": [v.to_dict() for v in self.links.values()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Snapshot:
        links = [Link.from_dict(x) for x in d["links"]]
        return cls(d.get("netns"), {x.index: x for x in links})


def _ips(value: Any) -> list[str]:
    """IFLA_BOND_ARP_IP_TARGET as pyroute2 0.7 and 0.9 decode it (a list, a string)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for v in value:
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, (list, tuple)) and len(v) >= 2:
                out.append(str(v[1]))
        return out
    return [str(value)]


def _int(v: Any) -> Optional[int]:
    return int(v) if v is not None else None


def link_from_msg(msg: Any) -> Link:
    """One RTM_NEWLINK message -> Link."""
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = slave_kind = None
    data = slave_data = None
    if linkinfo is not None:
        kind = linkinfo.get_attr("IFLA_INFO_KIND")
        slave_kind = linkinfo.get_attr("IFLA_INFO_SLAVE_KIND")
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        slave_data = linkinfo.get_attr("IFLA_INFO_SLAVE_DATA")
    name = msg.get_attr("IFLA_IFNAME") or f"if{msg['index']}"
    if kind is None:
        kind = "loopback" if name == "lo" else "device"
    link = Link(
        index=int(msg["index"]),
        name=name,
        kind=kind,
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        operstate=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
        admin_up=bool(int(msg["flags"]) & 1),
        address=msg.get_attr("IFLA_ADDRESS"),
        master=_int(msg.get_attr("IFLA_MASTER")) or None,
        lower_netnsid=_int(msg.get_attr("IFLA_LINK_NETNSID")),
        slave_kind=slave_kind,
    )
    lower = _int(msg.get_attr("IFLA_LINK"))
    if lower and lower != link.index:
        link.lower = lower
    if kind == "bond" and data is not None and hasattr(data, "get_attr"):
        ad = data.get_attr("IFLA_BOND_AD_INFO")
        link.bond = Bond(
            mode=int(data.get_attr("IFLA_BOND_MODE") or 0),
            miimon=int(data.get_attr("IFLA_BOND_MIIMON") or 0),
            arp_interval=int(data.get_attr("IFLA_BOND_ARP_INTERVAL") or 0),
            arp_ip_target=_ips(data.get_attr("IFLA_BOND_ARP_IP_TARGET")),
            xmit_hash_policy=_int(data.get_attr("IFLA_BOND_XMIT_HASH_POLICY")),
            lacp_rate=_int(data.get_attr("IFLA_BOND_AD_LACP_RATE")),
            active_slave=_int(data.get_attr("IFLA_BOND_ACTIVE_SLAVE")) or None,
        )
        if ad is not None and hasattr(ad, "get_attr"):
            link.bond.ad_aggregator = _int(ad.get_attr("IFLA_BOND_AD_INFO_AGGREGATOR"))
            link.bond.ad_num_ports = _int(ad.get_attr("IFLA_BOND_AD_INFO_NUM_PORTS"))
            link.bond.ad_partner_mac = ad.get_attr("IFLA_BOND_AD_INFO_PARTNER_MAC")
            link.bond.ad_partner_key = _int(ad.get_attr("IFLA_BOND_AD_INFO_PARTNER_KEY"))
    elif kind == "vlan" and data is not None and hasattr(data, "get_attr"):
        link.vlan_id = _int(data.get_attr("IFLA_VLAN_ID"))
    elif kind == "bridge" and data is not None and hasattr(data, "get_attr"):
        vf = data.get_attr("IFLA_BR_VLAN_FILTERING")
        link.vlan_filtering = bool(vf) if vf is not None else None
        link.stp_state = _int(data.get_attr("IFLA_BR_STP_STATE"))
    if slave_kind == "bond" and slave_data is not None and hasattr(slave_data, "get_attr"):
        link.bond_slave = BondSlave(
            state=_int(slave_data.get_attr("IFLA_BOND_SLAVE_STATE")),
            mii_status=_int(slave_data.get_attr("IFLA_BOND_SLAVE_MII_STATUS")),
            link_failure_count=_int(slave_data.get_attr("IFLA_BOND_SLAVE_LINK_FAILURE_COUNT")),
            perm_hwaddr=slave_data.get_attr("IFLA_BOND_SLAVE_PERM_HWADDR"),
            ad_aggregator_id=_int(slave_data.get_attr("IFLA_BOND_SLAVE_AD_AGGREGATOR_ID")),
        )
    elif slave_kind in ("bridge", "bridge_slave") and slave_data is not None:
        link.brport_state = _int(slave_data.get_attr("IFLA_BRPORT_STATE"))
    return link


def read(netns: str | None = None) -> Snapshot:
    """Every link of the running host (netns None) or of a named network namespace."""
    t0 = time.monotonic()
    if netns is not None:
        nsutil.netns_path(netns)  # UsageError for an unknown name, before anything else
    ipr = nsutil.iproute(netns)
    try:
        links = [link_from_msg(m) for m in ipr.get_links()]
    finally:
        ipr.close()
    return Snapshot(netns, {x.index: x for x in links}, round(time.monotonic() - t0, 4))
