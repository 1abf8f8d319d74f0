"""The host cluster as Pacemaker's own tools report it.

Read with ``crm_mon --output-as=xml`` (the computed state: who is online, what runs
where, fail counts, fencing history) and ``cibadmin -Q`` (the configuration and the raw
operation history); changed with cibadmin, crm_attribute, crm_resource and pcs. Nothing
here edits Pacemaker's files behind its back.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET


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
