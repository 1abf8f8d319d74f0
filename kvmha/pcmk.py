"""The host cluster as Pacemaker's own tools report it.

Read with ``crm_mon --output-as=xml`` (the computed state: who is online, what runs
where, fail counts, fencing history) and ``cibadmin -Q`` (the configuration and the raw
operation history); changed with cibadmin, crm_attribute, crm_resource and pcs. Nothing
here edits Pacemaker's files behind its back.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

from kvmha.errors import CommandFailed, KvmhaError
from kvmha.process import clean_env, run


@dataclasses.dataclass(frozen=True)
class NodeState:
    name: str
    online: bool
    standby: bool
    unclean: bool
    is_dc: bool


@dataclasses.dataclass(frozen=True)
class ResourceState:
    id: str
    agent: str
    role: str
    active: bool
    failed: bool
    nodes: tuple[str, ...]
    managed: bool = True


@dataclasses.dataclass(frozen=True)
class FenceEvent:
    target: str
    action: str
    status: str
    delegate: str
    completed: str


@dataclasses.dataclass(frozen=True)
class ClusterState:
    quorate: bool
    dc: str | None
    nodes: dict[str, NodeState]
    resources: dict[str, ResourceState]
    fencing: list[FenceEvent]
    fail_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    stonith_enabled: bool = True

    def online_nodes(self) -> list[str]:
        return sorted(n for n, s in self.nodes.items() if s.online)

    def running_on(self, rsc: str) -> str | None:
        r = self.resources.get(rsc)
        if r is None or not r.active or r.role != "Started" or len(r.nodes) != 1:
            return None
        return r.nodes[0]


CRM_MON_ARGV = ["crm_mon", "-1", "--output-as=xml", "--include=default,fencing,failcounts"]


def _true(v: str | None) -> bool:
    return v == "true"


def parse_crm_mon(xml_text: str) -> ClusterState:
    """Parse ``crm_mon -1 --output-as=xml --include=...`` (see CRM_MON_ARGV)."""
    root = ET.fromstring(xml_text)
    dc_el = root.find("summary/current_dc")
    quorate = dc_el is not None and _true(dc_el.get("with_quorum"))
    dc = dc_el.get("name") if dc_el is not None and _true(dc_el.get("present")) else None
    nodes = {}
    for n in root.iterfind("nodes/node"):
        name = n.get("name", "")
        nodes[name] = NodeState(
            name,
            _true(n.get("online")),
            _true(n.get("standby")),
            _true(n.get("unclean")),
            _true(n.get("is_dc")),
        )
    resources = {}
    for r in root.iter("resource"):
        rid = r.get("id", "")
        resources[rid] = ResourceState(
            rid,
            r.get("resource_agent", ""),
            r.get("role", ""),
            _true(r.get("active")),
            _true(r.get("failed")),
            tuple(sorted(x.get("name", "") for x in r.iterfind("node"))),
            r.get("managed", "true") == "true",
        )
    fencing = [
        FenceEvent(
            e.get("target", ""),
            e.get("action", ""),
            e.get("status", ""),
            e.get("delegate", ""),
            e.get("completed", ""),
        )
        for e in root.iterfind("fence_history/fence_event")
    ]
    fail_counts: dict[str, int] = {}
    for h in root.iterfind("node_history/node/resource_history"):
        count = h.get("fail-count")
        if count and count.isdigit():
            rid = h.get("id", "")
            fail_counts[rid] = fail_counts.get(rid, 0) + int(count)
    opts = root.find("summary/cluster_options")
    stonith = opts is None or opts.get("stonith-enabled", "true") == "true"
    return ClusterState(quorate, dc, nodes, resources, fencing, fail_counts, stonith)


# ---- talking to the local cluster ------------------------------------------------------
NOT_CONNECTED = 102  # CRM_EX_NOT_CONNECTED: no cluster to talk to


def _tool(argv: list[str], timeout: float = 30.0) -> str:
    r = run(argv, timeout=timeout, check=False, env=clean_env())
    if r.returncode == 0:
        return r.stdout
    text = r.stderr + r.stdout
    if (
        r.returncode == NOT_CONNECTED
        or "Could not connect to the CIB" in text
        or ("is pacemaker running" in text)
    ):
        raise KvmhaError(
            "the cluster is not running on this host",
            "run this on a cluster host, where pacemaker runs",
        )
    raise CommandFailed(argv, r.returncode, text)


def cluster_state() -> ClusterState:
    """The local cluster's computed state (crm_mon)."""
    return parse_crm_mon(_tool(CRM_MON_ARGV))


def query_cib() -> ET.Element:
    """The whole CIB: configuration and status."""
    return ET.fromstring(_tool(["cibadmin", "-Q"]))


def node_names(cib: ET.Element) -> list[str]:
    return sorted(n.get("uname", "") for n in cib.iterfind("configuration/nodes/node"))


def node_attribute(cib: ET.Element, node: str, name: str) -> str | None:
    for n in cib.iterfind("configuration/nodes/node"):
        if n.get("uname") == node:
            for nv in n.iterfind("instance_attributes/nvpair"):
                if nv.get("name") == name:
                    return nv.get("value")
    return None


def primitives(cib: ET.Element) -> dict[str, ET.Element]:
    return {p.get("id", ""): p for p in cib.iter("primitive")}


def nvpairs(prim: ET.Element, section: str) -> dict[str, str]:
    return {nv.get("name", ""): nv.get("value", "") for nv in prim.iterfind(f"{section}/nvpair")}


def cib_modify(xml: str, *, create: bool = True) -> None:
    argv = ["cibadmin", "--modify", "--xml-text", xml]
    if create:
        argv.insert(2, "--allow-create")
    _tool(argv)


def cib_create(section: str, xml: str) -> None:
    _tool(["cibadmin", "--create", "-o", section, "--xml-text", xml])


def cib_delete(xml: str) -> None:
    _tool(["cibadmin", "--delete", "--xml-text", xml])


def pcs(*args: str, timeout: float = 120.0) -> str:
    return _tool(["pcs", *args], timeout=timeout)


def crm_attribute(*args: str) -> str:
    return _tool(["crm_attribute", *args])


def crm_resource(*args: str, timeout: float = 60.0) -> str:
    return _tool(["crm_resource", *args], timeout=timeout)
