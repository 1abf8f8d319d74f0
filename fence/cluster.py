"""What the listener asks the host cluster: managed guests, where they run, fenced hosts.

Read with Pacemaker's own tools (``cibadmin -Q``, ``crm_mon --output-as=xml``) and
cached briefly; written with ``crm_resource`` (target-role), never by editing XML.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import xml.etree.ElementTree as ET
from typing import Optional, Protocol

from kvmha.errors import KvmhaError
from kvmha.process import clean_env, run

GUEST_AGENTS = {("kvmha", "Guest"), ("heartbeat", "VirtualDomain")}
DC_META = "kvmha-dc"


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


class HostCluster(Protocol):
    def guests(self) -> dict[str, ManagedGuest]: ...

    def status(self) -> Optional[Status]: ...

    def set_target_role(self, rid: str, role: str) -> None: ...


class ClusterError(Exception):
    pass


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


def _nv(el: Optional[ET.Element], tag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if el is None:
        return out
    for nvs in el.findall(tag):
        for nv in nvs.findall("nvpair"):
            out[nv.get("name", "")] = nv.get("value", "")
    return out


def parse_configuration(
    xml_text: str, xml_cache: dict[str, tuple[float, str, str]]
) -> dict[str, ManagedGuest]:
    root = ET.fromstring(xml_text)
    conf = root if root.tag == "configuration" else root.find(".//configuration")
    if conf is None:
        return {}
    tags: dict[str, set[str]] = {}
    for tag in conf.iterfind("tags/tag"):
        for ref in tag.iterfind("obj_ref"):
            tags.setdefault(ref.get("id", ""), set()).add(tag.get("id", ""))
    parents: dict[str, str] = {}
    res = conf.find("resources")
    if res is None:
        return {}
    for parent in res.iter():
        if parent.tag in ("group", "clone", "master", "bundle"):
            for child in parent.iter("primitive"):
                parents[child.get("id", "")] = parent.get("id", "")
    guests: dict[str, ManagedGuest] = {}
    for prim in res.iter("primitive"):
        if (prim.get("provider", ""), prim.get("type", "")) not in GUEST_AGENTS:
            continue
        rid = prim.get("id", "")
        params = _nv(prim, "instance_attributes")
        meta = _nv(prim, "meta_attributes")
        name, uuid = _domain_identity(params.get("config", ""), xml_cache)
        name = name or rid
        mytags = set(tags.get(rid, set()))
        if rid in parents:
            mytags |= tags.get(parents[rid], set())
        guests[name] = ManagedGuest(rid, name, uuid, frozenset(mytags), meta.get(DC_META))
    return guests


def parse_status(xml_text: str) -> Status:
    root = ET.fromstring(xml_text)
    nodes = {
        n.get("name", ""): NodeInfo(n.get("online") == "true", n.get("unclean") == "true")
        for n in root.iterfind("nodes/node")
    }
    placement: dict[str, tuple[str, ...]] = {}
    for r in root.iter("resource"):
        if r.get("active") == "true":
            placement[r.get("id", "")] = tuple(x.get("name", "") for x in r.iterfind("node"))
    fenced = frozenset(
        e.get("target", "")
        for e in root.iterfind("fence_history/fence_event")
        if e.get("status") == "success" and e.get("action") in ("off", "reboot")
    )
    return Status(nodes, placement, fenced)


class PacemakerCluster:
    """The local host cluster through its command-line tools, with short caches."""

    def __init__(self, cib_ttl: float = 5.0, status_ttl: float = 1.0) -> None:
        self.cib_ttl = cib_ttl
        self.status_ttl = status_ttl
        self._lock = threading.Lock()
        self._guests: tuple[float, dict[str, ManagedGuest]] = (-1e9, {})
        self._status: tuple[float, Optional[Status]] = (-1e9, None)
        self._xml_cache: dict[str, tuple[float, str, str]] = {}

    def _run(self, argv: list[str], timeout: float = 15.0) -> str:
        try:
            r = run(argv, timeout=timeout, check=False, env=clean_env())
        except KvmhaError as exc:
            raise ClusterError(str(exc)) from exc
        if r.returncode != 0:
            raise ClusterError(f"{argv[0]} failed ({r.returncode}): {r.stderr.strip()[:200]}")
        return r.stdout

    def guests(self) -> dict[str, ManagedGuest]:
        with self._lock:
            at, cached = self._guests
            if time.monotonic() - at < self.cib_ttl:
                return cached
            try:
                text = self._run(["cibadmin", "-Q", "-o", "configuration"])
                cached = parse_configuration(text, self._xml_cache)
            except (ClusterError, ET.ParseError):
                return cached  # the last known configuration beats none
            self._guests = (time.monotonic(), cached)
            return cached

    def status(self) -> Optional[Status]:
        with self._lock:
            at, cached = self._status
            if time.monotonic() - at < self.status_ttl:
                return cached
            try:
                text = self._run(["crm_mon", "-1", "--output-as=xml", "--include=fencing"])
                cached = parse_status(text)
            except (ClusterError, ET.ParseError):
                cached = None
            self._status = (time.monotonic(), cached)
            return cached

    def set_target_role(self, rid: str, role: str) -> None:
        self._run(
            [
                "crm_resource",
                "--resource",
                rid,
                "--meta",
                "--set-parameter",
                "target-role",
                "--parameter-value",
                role,
            ],
            timeout=30,
        )
        with self._lock:
            self._status = (-1e9, self._status[1])
