"""Reading the lab host cluster's state from Pacemaker's own XML output."""

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

    def online_nodes(self) -> list[str]:
        return sorted(n for n, s in self.nodes.items() if s.online)

    def running_on(self, rsc: str) -> str | None:
        r = self.resources.get(rsc)
        if r is None or not r.active or r.role != "Started" or len(r.nodes) != 1:
            return None
        return r.nodes[0]


def _true(v: str | None) -> bool:
    return v == "true"


def parse_crm_mon(xml_text: str) -> ClusterState:
    """Parse ``crm_mon -1 --output-as=xml --include=fencing``."""
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
    return ClusterState(quorate, dc, nodes, resources, fencing)
