"""Where guests may run, and in which order they start: priority, ordering, affinity
and utilization, written as Pacemaker's own CIB elements.

Every change is a ``Change``: applied to the live cluster (cibadmin, crm_resource,
crm_attribute through kvmha.pcmk) or to a copy of the CIB (an ElementTree), so that
``kvmha plan`` and admission control ask crm_simulate about exactly what would be
written. kvmha's elements:

- priority: the meta attribute ``priority`` (high 30, medium 20, low 10): Pacemaker
  places higher priorities first and, when not every guest fits, stops lower ones to
  keep them running. No orderings between the tiers (see TIER_ORDERINGS): a guest that
  must be *ready* before another starts uses ``--after``.
- ``--after DEP``: ``rsc_order kvmha-after-GUEST-DEP`` (DEP start, then GUEST start;
  mandatory, asymmetric). The Guest agent's start returns once the health checks pass,
  so "started" means ready.
- ``--apart-from`` / ``--together-with``: ``rsc_colocation kvmha-apart-A-B`` /
  ``kvmha-together-A-B`` with score -INFINITY / INFINITY (hard) or -500 / 500 (soft).
- utilization ``cpu`` and ``hv_memory`` (MiB): guests from their domain XML (the same
  names the agent's autoset_utilization_* keep up to date), hosts from libvirt's node
  info; ``placement-strategy=balanced`` so that they count.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union
from xml.sax.saxutils import quoteattr

from kvmha import pcmk
from kvmha.errors import UsageError

PRIORITIES = {"high": 30, "medium": 20, "low": 10}
DEFAULT_PRIORITY = "medium"
PRIORITY_ORDER_ID = "kvmha-priority-order"
# Orderings between the tiers are NOT written: when a lower-priority guest live-migrates
# to make room while higher ones start on the host it leaves, Pacemaker 2.1 builds a
# transition that cannot complete (migrate_to waits for the higher starts, which wait
# for the host's load_stopped, which waits for the migration). Found by bench/scale.py;
# kept here, off, with the test that shows it (tests/unit/test_plan.py).
TIER_ORDERINGS = False
SOFT_SCORE = 500
UTIL_CPU = "cpu"
UTIL_MEMORY = "hv_memory"
# ocf:kvmha:Guest sets host_memory as well as hv_memory by default (as VirtualDomain
# does). Pacemaker counts a utilization a node does not define as a capacity of 0, so a
# host without host_memory could run no guest at all once placement is balanced: every
# host capacity kvmha writes holds all three.
UTIL_HOST_MEMORY = "host_memory"
HOST_UTILIZATION = (UTIL_CPU, UTIL_MEMORY, UTIL_HOST_MEMORY)


# ---- changes: one description, applied live or to a copy ------------------------------
@dataclasses.dataclass(frozen=True)
class Create:
    section: str  # constraints, resources
    xml: str


@dataclasses.dataclass(frozen=True)
class Delete:
    tag: str
    id: str


@dataclasses.dataclass(frozen=True)
class SetMeta:
    rsc: str
    name: str
    value: Optional[str]  # None deletes


@dataclasses.dataclass(frozen=True)
class SetUtilization:
    node: bool  # True: a host, False: a resource
    target: str
    name: str
    value: str


@dataclasses.dataclass(frozen=True)
class SetProperty:
    name: str
    value: Optional[str]


@dataclasses.dataclass(frozen=True)
class SetNodeAttr:
    node: str
    name: str
    value: Optional[str]


Change = Union[Create, Delete, SetMeta, SetUtilization, SetProperty, SetNodeAttr]


def apply_live(changes: Sequence[Change]) -> None:
    for c in changes:
        if isinstance(c, Create):
            pcmk.cib_create(c.section, c.xml)
        elif isinstance(c, Delete):
            pcmk.cib_delete(f"<{c.tag} id={quoteattr(c.id)}/>")
        elif isinstance(c, SetMeta):
            if c.value is None:
                pcmk.crm_resource("--resource", c.rsc, "--meta", "--delete-parameter", c.name)
            else:
                pcmk.crm_resource(
                    "--resource",
                    c.rsc,
                    "--meta",
                    "--set-parameter",
                    c.name,
                    "--parameter-value",
                    c.value,
                )
        elif isinstance(c, SetUtilization):
            if c.node:
                pcmk.crm_attribute(
                    "--type",
                    "nodes",
                    "--node",
                    c.target,
                    "--utilization",
                    "--name",
                    c.name,
                    "--update",
                    c.value,
                )
            else:
                pcmk.crm_resource(
                    "--resource",
                    c.target,
                    "--utilization",
                    "--set-parameter",
                    c.name,
                    "--parameter-value",
                    c.value,
                )
        elif isinstance(c, SetNodeAttr):
            if c.value is None:
                pcmk.crm_attribute(
                    "--type", "nodes", "--node", c.node, "--name", c.name, "--delete"
                )
            else:
                pcmk.crm_attribute(
                    "--type", "nodes", "--node", c.node, "--name", c.name, "--update", c.value
                )
        elif isinstance(c, SetProperty):
            if c.value is None:
                pcmk.crm_attribute("--type", "crm_config", "--name", c.name, "--delete")
            else:
                pcmk.crm_attribute("--type", "crm_config", "--name", c.name, "--update", c.value)


def _nvset(parent: ET.Element, tag: str, set_id: str) -> ET.Element:
    el = parent.find(tag)
    if el is None:
        el = ET.SubElement(parent, tag, id=set_id)
    return el


def _set_nv(nvs: ET.Element, prefix: str, name: str, value: Optional[str]) -> None:
    for nv in nvs.findall("nvpair"):
        if nv.get("name") == name:
            if value is None:
                nvs.remove(nv)
            else:
                nv.set("value", value)
            return
    if value is not None:
        ET.SubElement(nvs, "nvpair", id=f"{prefix}-{name}", name=name, value=value)


def apply_copy(cib: ET.Element, changes: Sequence[Change]) -> None:
    """Apply changes to a CIB copy in place (what the live tools would write)."""
    conf = cib.find("configuration")
    assert conf is not None
    for c in changes:
        if isinstance(c, Create):
            section = conf.find(c.section)
            if section is None:
                section = ET.SubElement(conf, c.section)
            section.append(ET.fromstring(c.xml))
        elif isinstance(c, Delete):
            for parent in conf.iter():
                for child in list(parent):
                    if child.tag == c.tag and child.get("id") == c.id:
                        parent.remove(child)
        elif isinstance(c, SetMeta):
            prim = pcmk.primitives(cib).get(c.rsc)
            if prim is None:
                raise UsageError(f"unknown resource {c.rsc!r}")
            nvs = _nvset(prim, "meta_attributes", f"{c.rsc}-meta_attributes")
            _set_nv(nvs, nvs.get("id", c.rsc), c.name, c.value)
        elif isinstance(c, SetUtilization):
            if c.node:
                el = next(
                    (n for n in conf.iterfind("nodes/node") if n.get("uname") == c.target), None
                )
            else:
                el = pcmk.primitives(cib).get(c.target)
            if el is None:
                raise UsageError(f"unknown {'host' if c.node else 'resource'} {c.target!r}")
            nvs = _nvset(el, "utilization", f"{el.get('id')}-utilization")
            _set_nv(nvs, nvs.get("id", ""), c.name, c.value)
        elif isinstance(c, SetNodeAttr):
            node = next((n for n in conf.iterfind("nodes/node") if n.get("uname") == c.node), None)
            if node is None:
                raise UsageError(f"unknown host {c.node!r}")
            nvs = _nvset(node, "instance_attributes", f"nodes-{node.get('id')}")
            _set_nv(nvs, nvs.get("id", ""), c.name, c.value)
        elif isinstance(c, SetProperty):
            crm = conf.find("crm_config")
            assert crm is not None
            ps = next(
                (
                    p
                    for p in crm.iterfind("cluster_property_set")
                    if p.get("id") == "cib-bootstrap-options"
                ),
                None,
            )
            if ps is None:
                ps = ET.SubElement(crm, "cluster_property_set", id="cib-bootstrap-options")
            _set_nv(ps, "cib-bootstrap-options", c.name, c.value)


# ---- reading what is configured --------------------------------------------------------
def property_value(cib: ET.Element, name: str) -> Optional[str]:
    for nv in cib.iterfind("configuration/crm_config/cluster_property_set/nvpair"):
        if nv.get("name") == name:
            return nv.get("value")
    return None


def priority_of(prim: ET.Element) -> Optional[str]:
    raw = pcmk.nvpairs(prim, "meta_attributes").get("priority")
    for name, score in PRIORITIES.items():
        if raw == str(score):
            return name
    return None if raw is None else raw


def utilization(el: ET.Element) -> dict[str, int]:
    out = {}
    for k, v in pcmk.nvpairs(el, "utilization").items():
        try:
            out[k] = int(v)
        except ValueError:
            continue
    return out


def node_utilization(cib: ET.Element) -> dict[str, dict[str, int]]:
    return {n.get("uname", ""): utilization(n) for n in cib.iterfind("configuration/nodes/node")}


def after_edges(cib: ET.Element) -> dict[str, set[str]]:
    """guest -> the guests it starts after (kvmha's ordering constraints)."""
    out: dict[str, set[str]] = {}
    for o in cib.iterfind("configuration/constraints/rsc_order"):
        if o.get("id", "").startswith("kvmha-after-") and o.get("first") and o.get("then"):
            out.setdefault(o.get("then", ""), set()).add(o.get("first", ""))
    return out


@dataclasses.dataclass(frozen=True)
class Affinity:
    id: str
    a: str
    b: str
    together: bool
    hard: bool


def affinities(cib: ET.Element) -> list[Affinity]:
    out = []
    for c in cib.iterfind("configuration/constraints/rsc_colocation"):
        cid = c.get("id", "")
        if not cid.startswith(("kvmha-apart-", "kvmha-together-")):
            continue
        score = c.get("score", "0")
        hard = score.lstrip("+-").upper() == "INFINITY"
        out.append(
            Affinity(cid, c.get("rsc", ""), c.get("with-rsc", ""), cid.startswith("kvmha-t"), hard)
        )
    return out


# ---- building changes ------------------------------------------------------------------
def priority_changes(cib: ET.Element, guest: str, level: str) -> list[Change]:
    """Set guest's priority and rebuild the tier orderings over every guest."""
    if level not in PRIORITIES:
        raise UsageError(f"bad priority {level!r}", "use high, medium or low")
    changes: list[Change] = [SetMeta(guest, "priority", str(PRIORITIES[level]))]
    return changes + tier_order_changes(cib, {guest: level})


def tier_order_changes(cib: ET.Element, override: Optional[dict[str, str]] = None) -> list[Change]:
    """The optional tier orderings, rebuilt. A guest in an --after rule starts by that
    rule and is left out of them: a high guest after a low one would otherwise close a
    cycle (Pacemaker would produce no valid transition)."""
    from kvmha.guests import guest_primitives

    override = override or {}
    edges = after_edges(cib)
    in_after = set(edges) | {d for deps in edges.values() for d in deps}
    tiers: dict[str, list[str]] = {p: [] for p in PRIORITIES}
    for rid, prim in sorted(guest_primitives(cib).items()):
        p = override.get(rid) or priority_of(prim)
        if p in tiers and rid not in in_after:
            tiers[p].append(rid)
    changes: list[Change] = []
    for o in cib.iterfind("configuration/constraints/rsc_order"):
        if o.get("id", "").startswith(PRIORITY_ORDER_ID):
            changes.append(Delete("rsc_order", o.get("id", "")))
    if not TIER_ORDERINGS:
        return changes
    # one constraint per pair of tiers: a chain high -> medium -> low would break where
    # no medium guest is starting, and low would no longer wait for high
    sets = [(p, members) for p, members in tiers.items() if members]
    for i, (first, fm) in enumerate(sets):
        for then, tm in sets[i + 1 :]:
            cid = f"{PRIORITY_ORDER_ID}-{first}-{then}"
            xml = f'<rsc_order id="{cid}" kind="Optional" symmetrical="false">'
            for p, members in ((first, fm), (then, tm)):
                xml += f'<resource_set id="{cid}-{p}" sequential="false">'
                xml += "".join(f"<resource_ref id={quoteattr(m)}/>" for m in members)
                xml += "</resource_set>"
            xml += "</rsc_order>"
            changes.append(Create("constraints", xml))
    return changes


def _with_tiers(cib: ET.Element, changes: list[Change]) -> list[Change]:
    """changes, then the tier orderings as they must be once changes are applied."""
    work = ET.fromstring(ET.tostring(cib))
    apply_copy(work, changes)
    return changes + tier_order_changes(work)


def _require_guests(cib: ET.Element, *names: str) -> None:
    from kvmha.guests import require_guest

    for n in names:
        require_guest(cib, n)


def after_changes(cib: ET.Element, guest: str, dep: str) -> list[Change]:
    _require_guests(cib, guest, dep)
    if dep == guest:
        raise UsageError(f"{guest} cannot start after itself")
    edges = after_edges(cib)
    # would dep (transitively) wait for guest? then guest after dep closes a circle
    seen, todo = set(), [dep]
    while todo:
        g = todo.pop()
        if g == guest:
            raise UsageError(
                f"circular --after: {dep} already starts after {guest}",
                f"remove one of them (kvmha guest set {dep} --no-after {guest})",
            )
        if g not in seen:
            seen.add(g)
            todo.extend(edges.get(g, ()))
    if dep in edges.get(guest, set()):
        return []
    cid = f"kvmha-after-{guest}-{dep}"
    return _with_tiers(
        cib,
        [
            Create(
                "constraints",
                f'<rsc_order id={quoteattr(cid)} first={quoteattr(dep)} first-action="start" '
                f'then={quoteattr(guest)} then-action="start" kind="Mandatory" '
                'symmetrical="false"/>',
            )
        ],
    )


def no_after_changes(cib: ET.Element, guest: str, dep: str) -> list[Change]:
    _require_guests(cib, guest, dep)
    cid = f"kvmha-after-{guest}-{dep}"
    if cib.find(f".//rsc_order[@id='{cid}']") is None:
        raise UsageError(f"{guest} does not start after {dep}")
    return _with_tiers(cib, [Delete("rsc_order", cid)])


def affinity_changes(
    cib: ET.Element, guest: str, other: str, *, together: bool, hard: bool
) -> list[Change]:
    _require_guests(cib, guest, other)
    if other == guest:
        word = "--together-with" if together else "--apart-from"
        raise UsageError(f"{word} {guest}: a guest cannot be placed relative to itself")
    a, b = sorted((guest, other))
    changes: list[Change] = []
    for old in affinities(cib):
        if {old.a, old.b} == {a, b}:
            if old.together != together:
                raise UsageError(
                    f"{a} and {b} are already "
                    f"{'kept together' if old.together else 'kept apart'}",
                    f"remove that first (kvmha guest set {guest} --no-affinity {other})",
                )
            changes.append(Delete("rsc_colocation", old.id))
    cid = f"kvmha-{'together' if together else 'apart'}-{a}-{b}"
    score = ("" if together else "-") + ("INFINITY" if hard else str(SOFT_SCORE))
    changes.append(
        Create(
            "constraints",
            f"<rsc_colocation id={quoteattr(cid)} rsc={quoteattr(a)} "
            f'with-rsc={quoteattr(b)} score="{score}"/>',
        )
    )
    return changes


def no_affinity_changes(cib: ET.Element, guest: str, other: str) -> list[Change]:
    _require_guests(cib, guest, other)
    found = [x for x in affinities(cib) if {x.a, x.b} == {guest, other}]
    if not found:
        raise UsageError(f"{guest} and {other} have no affinity rule")
    return [Delete("rsc_colocation", x.id) for x in found]


def domain_size(xml_file: Path) -> tuple[int, int]:
    """(vcpus, memory in MiB) of a libvirt domain XML."""
    try:
        root = ET.fromstring(xml_file.read_text())
    except (OSError, ET.ParseError) as exc:
        raise UsageError(f"cannot read the domain XML {xml_file}: {exc}") from exc
    vcpu = int((root.findtext("vcpu") or "1").strip() or 1)
    mem_el = root.find("currentMemory")
    if mem_el is None:
        mem_el = root.find("memory")
    if mem_el is None or not (mem_el.text or "").strip():
        raise UsageError(f"{xml_file} has no <memory>")
    unit = (mem_el.get("unit") or "KiB").lower()
    factor = {
        "b": 1 / 1048576,
        "bytes": 1 / 1048576,
        "k": 1 / 1024,
        "kib": 1 / 1024,
        "kb": 1000 / 1048576,
        "m": 1,
        "mib": 1,
        "mb": 1000000 / 1048576,
        "g": 1024,
        "gib": 1024,
        "gb": 1e9 / 1048576,
        "t": 1048576,
        "tib": 1048576,
    }.get(unit)
    if factor is None:
        raise UsageError(f"{xml_file}: unknown memory unit {unit!r}")
    return vcpu, max(1, int(int(mem_el.text or "0") * factor))


def guest_utilization_changes(guest: str, cpu: int, memory_mib: int) -> list[Change]:
    return [
        SetUtilization(False, guest, UTIL_CPU, str(cpu)),
        SetUtilization(False, guest, UTIL_MEMORY, str(memory_mib)),
        SetUtilization(False, guest, UTIL_HOST_MEMORY, str(memory_mib)),
    ]


def host_capacity_changes(host: str, cpu: int, memory_mib: int) -> list[Change]:
    return [
        SetUtilization(True, host, UTIL_CPU, str(cpu)),
        SetUtilization(True, host, UTIL_MEMORY, str(memory_mib)),
        SetUtilization(True, host, UTIL_HOST_MEMORY, str(memory_mib)),
        SetProperty("placement-strategy", "balanced"),
    ]
