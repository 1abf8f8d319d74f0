"""What the listener asks the host cluster: managed guests, where they run, fenced hosts,
member hosts.

All of it through ``kvmha.pcmk`` (the one module that runs the cluster tools, with its
caches); this module only turns the cluster's records into the listener's terms: a
managed guest's domain name and UUID (from its domain XML), and when each host's power
was last cut by the host cluster's fencer.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from typing import Optional, Protocol

from kvmha import pcmk
from kvmha.errors import KvmhaError

GUEST_AGENTS = {("kvmha", "Guest"), ("heartbeat", "VirtualDomain")}
DC_META = "kvmha-dc"

ClusterError = KvmhaError  # what the host cluster's calls raise (message and fix kept)


@dataclasses.dataclass(frozen=True)
class ManagedGuest:
    rid: str
    name: str
    uuid: str
    tags: frozenset[str] = frozenset()
    dc: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    online: bool
    unclean: bool


@dataclasses.dataclass(frozen=True)
class Status:
    nodes: dict[str, NodeInfo]
    placement: dict[str, tuple[str, ...]]  # resource id -> nodes where it is active
    fenced: frozenset[str]  # nodes with a successful off/reboot in the fence history
    fenced_at: dict[str, float] = dataclasses.field(default_factory=dict)  # node -> last, Unix

    def fenced_after(self, node: str, t: Optional[float]) -> bool:
        """node's power was cut by the fencer after Unix time t (any time, when t is None),
        and the node is cleanly offline since (not online again, not awaiting fencing)."""
        info = self.nodes.get(node)
        if info is None or info.online or info.unclean:
            return False
        at = self.fenced_at.get(node)
        if at is None:
            return False
        return t is None or at > t


class HostCluster(Protocol):
    def guests(self) -> dict[str, ManagedGuest]: ...

    def status(self) -> Optional[Status]: ...

    def hosts(self) -> dict[str, str]: ...

    def set_target_role(self, rid: str, role: str) -> None: ...


def find_guest(cluster: HostCluster, name: str, uuid: str = "") -> Optional[ManagedGuest]:
    guests = cluster.guests()
    g = guests.get(name)
    if g is not None:
        return g
    for g in guests.values():
        if uuid and g.uuid and g.uuid.lower() == uuid.lower():
            return g
        if g.uuid and g.uuid.lower() == name.lower():
            return g
    return None


def node_fenced(st: Optional[Status], node: str) -> bool:
    """The host cluster recorded node as fenced, and it is still cleanly offline."""
    if st is None:
        return False
    info = st.nodes.get(node)
    return bool(info and not info.online and not info.unclean and node in st.fenced)


def _domain_identity(path: str, cache: dict[str, tuple[float, str, str]]) -> tuple[str, str]:
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return "", ""
    hit = cache.get(path)
    if hit and hit[0] == mtime:
        return hit[1], hit[2]
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return "", ""
    name = (root.findtext("name") or "").strip()
    uuid = (root.findtext("uuid") or "").strip()
    cache[path] = (mtime, name, uuid)
    return name, uuid


def guests_of(
    conf: ET.Element, xml_cache: dict[str, tuple[float, str, str]]
) -> dict[str, ManagedGuest]:
    guests: dict[str, ManagedGuest] = {}
    for p in pcmk.guest_primitives(conf, GUEST_AGENTS):
        name, uuid = _domain_identity(p.params.get("config", ""), xml_cache)
        name = name or p.id
        guests[name] = ManagedGuest(p.id, name, uuid, p.tags, p.meta.get(DC_META))
    return guests


def parse_configuration(
    xml_text: str, xml_cache: dict[str, tuple[float, str, str]]
) -> dict[str, ManagedGuest]:
    return guests_of(ET.fromstring(xml_text), xml_cache)


def status_of(st: pcmk.ClusterState) -> Status:
    nodes = {n: NodeInfo(s.online, s.unclean) for n, s in st.nodes.items()}
    fenced_at = {n: t for n in {e.target for e in st.fencing} if (t := st.last_fenced(n))}
    fenced = frozenset(e.target for e in st.fencing if e.powered_off)
    return Status(nodes, st.placement(), fenced, fenced_at)


def parse_status(xml_text: str) -> Status:
    return status_of(pcmk.parse_crm_mon(xml_text))


class PacemakerCluster:
    """The local host cluster through kvmha.pcmk, with its short caches."""

    def __init__(self, cib_ttl: float = 5.0, status_ttl: float = 1.0) -> None:
        self.pcmk = pcmk.CachedCluster(cib_ttl, status_ttl)
        self._xml_cache: dict[str, tuple[float, str, str]] = {}
        self._guests: tuple[Optional[ET.Element], dict[str, ManagedGuest]] = (None, {})

    def guests(self) -> dict[str, ManagedGuest]:
        conf = self.pcmk.configuration()
        if conf is None:
            return {}
        if self._guests[0] is not conf:
            self._guests = (conf, guests_of(conf, self._xml_cache))
        return self._guests[1]

    def status(self) -> Optional[Status]:
        st = self.pcmk.state()
        return status_of(st) if st is not None else None

    def hosts(self) -> dict[str, str]:
        return self.pcmk.hosts()

    def set_target_role(self, rid: str, role: str) -> None:
        self.pcmk.set_target_role(rid, role)
