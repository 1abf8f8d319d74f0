"""What ``kvmha net check`` looks for: a declarative table of rules.

Each rule has a code, a severity, a scope (which links of a bridge's stack it looks
at), a test that returns the facts for its message when it fires (None when it does
not), a message template and a reference. The references and where they disagree are
explained in docs/net.md; the probe's measurements back every mode rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, Optional

from kvmha.netcfg.links import BOND_MODES, BRPORT_STATE, MII, ZERO_MAC, Link, Snapshot
from kvmha.netcfg.stack import Entry

INFO, WARNING, INCOMPATIBLE = "info", "warning", "incompatible"
SEVERITY_RANK = {INFO: 0, WARNING: 1, INCOMPATIBLE: 2}
VERDICT = {0: "ok", 1: "warning", 2: "incompatible"}

REF_KERNEL = "Linux Documentation/networking/bonding.rst"
REF_KERNEL_MON = REF_KERNEL + " (Link Monitoring; 'miimon or arp_interval ... must be specified')"
REF_KERNEL_SWITCH = REF_KERNEL + " (Switch Configuration)"
REF_ALB = "drivers/net/bonding/bond_alb.c: bond_do_alb_xmit(), rlb_arp_xmit()"
REF_OVIRT = "oVirt ovirt-engine BondMode.java isValidForVmNetwork()"
REF_RHV = "RHV 4.x Technical Reference, Bonding Modes"
REF_RHEL = "RHEL 6/7 Virtualization Deployment and Administration Guide (bonding with bridges)"
REF_PROBE = "kvmha net probe, docs/net.md"
REF_KVMHA = "kvmha net check rules, docs/net.md"
REF_BRIDGE = "Linux bridge: frames larger than a port's MTU are dropped (net/bridge/br_forward.c)"

Facts = Optional[Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Subject:
    """What a rule looks at: one link of a bridge's stack, with its context."""

    snap: Snapshot
    bridge: Link
    entry: Entry
    stack: tuple[Entry, ...]

    @property
    def link(self) -> Link:
        return self.entry.link

    def under(self) -> list[Link]:
        """Links whose master is this link (ports of a bridge, slaves of a bond)."""
        return sorted(
            (e.link for e in self.stack if e.parent is self.link and e.role != "lower"),
            key=lambda x: x.name,
        )

    def via(self) -> str:
        """' (through VLAN x)' when something sits between the link and its bridge."""
        mids = [n for n in self.entry.path[1:-1]]
        return f" (through {' -> '.join(reversed(mids))})" if mids else ""


@dataclasses.dataclass(frozen=True)
class Rule:
    code: str
    severity: str
    scope: str  # bridge | port | bond | any
    test: Callable[[Subject], Facts]
    message: str
    reference: str


@dataclasses.dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str
    reference: str
    link: str

    def to_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "reference": self.reference,
            "link": self.link,
        }


# ---------------------------------------------------------------------------
# tests: each returns the facts for its message, or None
# ---------------------------------------------------------------------------
def _base(s: Subject) -> dict[str, Any]:
    d: dict[str, Any] = {"link": s.link.name, "bridge": s.bridge.name, "via": s.via()}
    if s.link.bond is not None:
        d["bond"] = s.link.name
        d["mode"] = s.link.bond.mode
        d["mode_name"] = BOND_MODES.get(s.link.bond.mode, str(s.link.bond.mode))
    return d


def _mode(*modes: int) -> Callable[[Subject], Facts]:
    def test(s: Subject) -> Facts:
        b = s.link.bond
        return _base(s) if b is not None and b.mode in modes else None

    return test


def _lacp_no_partner(s: Subject) -> Facts:
    b = s.link.bond
    if b is None or b.mode != 4:
        return None
    if b.ad_partner_mac not in (None, ZERO_MAC):
        return None
    return {**_base(s), "partner": b.ad_partner_mac or "none", "agg": b.ad_aggregator}


def _lacp_outside(s: Subject) -> Facts:
    b = s.link.bond
    if b is None or b.mode != 4 or b.ad_aggregator is None:
        return None
    if b.ad_partner_mac in (None, ZERO_MAC):
        return None  # reported as no partner
    out = [
        x.name
        for x in s.under()
        if x.bond_slave is not None
        and x.bond_slave.ad_aggregator_id is not None
        and x.bond_slave.ad_aggregator_id != b.ad_aggregator
    ]
    return {**_base(s), "names": ", ".join(out), "agg": b.ad_aggregator} if out else None


def _lacp_ok(s: Subject) -> Facts:
    b = s.link.bond
    if b is None or b.mode != 4 or b.ad_partner_mac in (None, ZERO_MAC):
        return None
    return {**_base(s), "partner": b.ad_partner_mac, "agg": b.ad_aggregator, "n": b.ad_num_ports}


def _arp_monitor(s: Subject) -> Facts:
    b = s.link.bond
    if b is None or b.arp_interval <= 0:
        return None
    targets = ", ".join(b.arp_ip_target) or "none"
    return {**_base(s), "ms": b.arp_interval, "targets": targets}


def _no_monitor(s: Subject) -> Facts:
    b = s.link.bond
    if b is None or b.miimon > 0 or b.arp_interval > 0:
        return None
    return _base(s)


def _few_slaves(s: Subject) -> Facts:
    if s.link.bond is None:
        return None
    slaves = s.under()
    if len(slaves) >= 2:
        return None
    return {**_base(s), "n": len(slaves), "names": ", ".join(x.name for x in slaves) or "none"}


def _slave_down(s: Subject) -> Facts:
    if s.link.bond is None:
        return None
    down = []
    for x in s.under():
        mii = x.bond_slave.mii_status if x.bond_slave else None
        if (mii not in (None, 0)) or x.operstate not in ("UP", "UNKNOWN"):
            down.append(
                f"{x.name} (MII {MII.get(mii, mii) if mii is not None else '?'}, {x.operstate})"
            )
    return {**_base(s), "names": ", ".join(down)} if down else None


def _port_down(s: Subject) -> Facts:
    link = s.link
    if s.entry.role != "port":
        return None
    st = link.brport_state
    if link.operstate in ("UP", "UNKNOWN") and link.admin_up and st not in (0,):
        return None
    state = BRPORT_STATE.get(st, "?") if st is not None else "?"
    return {
        **_base(s),
        "port": link.name,
        "op": link.operstate,
        "st": state,
        "admin": "up" if link.admin_up else "down",
    }


def _bridge_down(s: Subject) -> Facts:
    link = s.link
    if link.admin_up and link.operstate in ("UP", "UNKNOWN"):
        return None
    return {**_base(s), "op": link.operstate, "admin": "up" if link.admin_up else "down"}


def _port_mtus(s: Subject) -> Facts:
    ports = s.under()
    mtus = {x.mtu for x in ports} | {s.link.mtu}
    if len(ports) == 0 or len(mtus) < 2:
        return None
    listing = ", ".join(f"{x.name} {x.mtu}" for x in [s.link, *ports])
    return {**_base(s), "list": listing, "min": min(mtus)}


def _stack_mtu(s: Subject) -> Facts:
    """A link that is not a bridge port and whose MTU differs from what sits on it: a bond
    slave with another MTU than its bond, a VLAN bigger than its lower device."""
    e = s.entry
    if e.parent is None or e.role == "port":
        return None
    upper = e.parent
    if e.role == "slave" and s.link.mtu != upper.mtu:
        return {
            **_base(s),
            "upper": upper.name,
            "u": upper.mtu,
            "lower": s.link.name,
            "l": s.link.mtu,
        }
    if e.role == "lower" and upper.mtu > s.link.mtu:
        return {
            **_base(s),
            "upper": upper.name,
            "u": upper.mtu,
            "lower": s.link.name,
            "l": s.link.mtu,
        }
    return None


def _no_ports(s: Subject) -> Facts:
    return None if s.under() else _base(s)


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------
RULES: tuple[Rule, ...] = (
    Rule(
        "bond-mode-balance-rr",
        INCOMPATIBLE,
        "bond",
        _mode(0),
        "{bond}{via} is in mode 0 (balance-rr) under bridge {bridge}: it works only if the "
        "switch ports form a static LAG; with plain ports the switch sends a guest's frames "
        "back in on the other link, {bridge} learns the guest's MAC on {bond} and drops its "
        "replies (probe: 100 % loss); it also spreads one flow over both links and reorders "
        "it; oVirt/RHV refuse it for VM networks",
        f"{REF_OVIRT}: false; {REF_RHV}; {REF_RHEL}; {REF_KERNEL_SWITCH}; {REF_PROBE}",
    ),
    Rule(
        "bond-mode-balance-tlb",
        INCOMPATIBLE,
        "bond",
        _mode(5),
        "{bond}{via} is in mode 5 (balance-tlb) under bridge {bridge}: frames it sends "
        "through a slave that is not the active one get that slave's MAC as source, guests' "
        "frames included, so the switch and the peers see guest traffic from the host NIC's "
        "MAC (breaks port security, DHCP snooping, dynamic ARP inspection, MAC ACLs; probe: "
        "guest IPs seen from a slave MAC)",
        f"{REF_OVIRT}: false; {REF_RHV}; {REF_RHEL}; {REF_ALB}; {REF_PROBE}",
    ),
    Rule(
        "bond-mode-balance-alb",
        INCOMPATIBLE,
        "bond",
        _mode(6),
        "{bond}{via} is in mode 6 (balance-alb) under bridge {bridge}: like balance-tlb it "
        "rewrites the source MAC of guests' frames sent through a non-active slave; its "
        "receive balancing (ARP rewriting) never applies to bridged guests, and after a "
        "failover guests' return traffic can be lost (bond -> VLAN -> bridge stacks are not "
        "even recognised as bridged by the kernel)",
        f"{REF_OVIRT}: false; {REF_RHV}; {REF_RHEL}; {REF_ALB}; {REF_PROBE}",
    ),
    Rule(
        "bond-mode-broadcast",
        WARNING,
        "bond",
        _mode(3),
        "{bond}{via} is in mode 3 (broadcast) under bridge {bridge}: every frame, unicast "
        "included, goes out on every link, so with a static LAG each guest frame arrives "
        "twice and peers answer twice (probe: 100 % duplicates), with plain ports it loops. "
        "The references disagree: the RHV 4.x Technical Reference (and oVirt's "
        "isValidForVmNetwork) allow mode 3 for VM networks, the RHEL 6/7 virtualization "
        "guides say modes 0, 3, 5 and 6 are likely to make guest connections fail",
        f"{REF_RHV}: supported; {REF_OVIRT}: true; {REF_RHEL}: not supported; {REF_PROBE}",
    ),
    Rule(
        "bond-lacp-no-partner",
        WARNING,
        "bond",
        _lacp_no_partner,
        "{bond}{via} is in mode 4 (802.3ad) but has no LACP partner (partner MAC {partner}): "
        "the switch ports are not an LACP LAG, so the bond runs on one link only "
        "(aggregator {agg}) and has no load balancing; configure LACP on the switch",
        f"{REF_KERNEL} (802.3ad); {REF_KERNEL_SWITCH}; {REF_PROBE}",
    ),
    Rule(
        "bond-lacp-ports-outside-aggregator",
        WARNING,
        "bond",
        _lacp_outside,
        "slaves {names} of {bond} are not in its active aggregator {agg}: they carry no "
        "traffic (switch ports in different LAGs, or different speeds)",
        f"{REF_KERNEL} (802.3ad, ad_select)",
    ),
    Rule(
        "bond-arp-monitor",
        WARNING,
        "bond",
        _arp_monitor,
        "{bond}{via} under bridge {bridge} uses ARP monitoring (arp_interval {ms} ms, "
        "targets {targets}): the bond's own ARP probes decide link state, but the IP "
        "lives on {bridge} and guests' traffic does not count; use miimon instead",
        f"{REF_RHEL} ('use miimon, ARP monitoring does not work here'); {REF_KERNEL_MON}",
    ),
    Rule(
        "bond-no-link-monitor",
        WARNING,
        "bond",
        _no_monitor,
        "{bond}{via} has neither miimon nor arp_interval: a failed link is never detected, "
        "the bond keeps sending on it and there is no failover",
        REF_KERNEL_MON,
    ),
    Rule(
        "bond-single-slave",
        WARNING,
        "bond",
        _few_slaves,
        "{bond}{via} has {n} slave(s) ({names}): no redundancy, one link failure cuts "
        "{bridge} off",
        f"{REF_KERNEL}; {REF_KVMHA}",
    ),
    Rule(
        "bond-slave-down",
        WARNING,
        "bond",
        _slave_down,
        "{bond}{via}: slave(s) down: {names}; the bond runs without redundancy",
        f"{REF_KERNEL_MON}",
    ),
    Rule(
        "bond-mode-active-backup",
        INFO,
        "bond",
        _mode(1),
        "{bond}{via} is in mode 1 (active-backup): valid for bridged guests with plain "
        "switch ports (no switch configuration)",
        f"{REF_OVIRT}: true; {REF_RHV}; {REF_RHEL}; {REF_PROBE}",
    ),
    Rule(
        "bond-mode-balance-xor",
        INFO,
        "bond",
        _mode(2),
        "{bond}{via} is in mode 2 (balance-xor): valid for bridged guests when the switch "
        "ports form a static LAG (with plain ports guests' frames loop back and are lost)",
        f"{REF_OVIRT}: true; {REF_RHV}; {REF_RHEL}; {REF_KERNEL_SWITCH}; {REF_PROBE}",
    ),
    Rule(
        "bond-lacp-partner",
        INFO,
        "bond",
        _lacp_ok,
        "{bond}{via} is in mode 4 (802.3ad) with LACP partner {partner}, aggregator {agg} "
        "with {n} port(s): valid for bridged guests",
        f"{REF_OVIRT}: true; {REF_RHV}; {REF_RHEL}; {REF_PROBE}",
    ),
    Rule(
        "bridge-down",
        WARNING,
        "bridge",
        _bridge_down,
        "bridge {bridge} is down (admin {admin}, operstate {op})",
        REF_KVMHA,
    ),
    Rule(
        "bridge-no-ports",
        INFO,
        "bridge",
        _no_ports,
        "bridge {bridge} has no ports: guests on it reach nothing outside this host",
        REF_KVMHA,
    ),
    Rule(
        "bridge-port-down",
        WARNING,
        "port",
        _port_down,
        "port {port} of {bridge} is down (admin {admin}, operstate {op}, port state {st}): "
        "nothing passes through it",
        REF_KVMHA,
    ),
    Rule(
        "mtu-bridge-ports",
        WARNING,
        "bridge",
        _port_mtus,
        "{bridge} and its ports have different MTUs ({list}): frames bigger than {min} "
        "bytes are dropped where they cross the smaller one, without an ICMP error",
        REF_BRIDGE,
    ),
    Rule(
        "mtu-stack",
        WARNING,
        "any",
        _stack_mtu,
        "MTU mismatch in the stack of {bridge}: {upper} has MTU {u}, {lower} below it has " "{l}",
        REF_BRIDGE,
    ),
)


def evaluate(snap: Snapshot, bridge: Link, stack: list[Entry]) -> list[Finding]:
    """Every rule of the table on every link of one bridge's stack, in table order."""
    st = tuple(stack)
    findings: list[Finding] = []
    for rule in RULES:
        for e in st:
            if rule.scope == "bridge" and e.role != "bridge":
                continue
            if rule.scope == "port" and e.role != "port":
                continue
            if rule.scope == "bond" and e.link.bond is None:
                continue
            facts = rule.test(Subject(snap, bridge, e, st))
            if facts is None:
                continue
            findings.append(
                Finding(
                    rule.severity,
                    rule.code,
                    rule.message.format(**facts),
                    rule.reference,
                    e.link.name,
                )
            )
    return findings


def verdict(findings: list[Finding]) -> str:
    rank = max((SEVERITY_RANK[f.severity] for f in findings), default=0)
    return VERDICT[rank]
