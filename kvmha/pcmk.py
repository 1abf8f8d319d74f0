"""The host cluster as Pacemaker's and Corosync's own tools report it: the one module that
runs them.

Read with ``crm_mon --output-as=xml`` (the computed state: who is online, what runs where,
fail counts, fencing history), ``cibadmin -Q`` (the configuration), ``crm_node`` and
``corosync-cmapctl`` (membership and the configured node list) and ``stonith_admin``
(the fencer's history); changed with cibadmin, crm_attribute, crm_resource and pcs.
Nothing here edits Pacemaker's files behind its back, and nothing else in kvmha runs
these tools.

Every call goes through a *runner* (``Runner``: argv and a timeout in, a ``Result`` out),
by default a subprocess with a clean environment; tests swap it (``use_runner``) for one
that expects an exact list of calls (``tests/support/pcmk_runner.py``), as pcs's tier0
tests do. The parsers are pure functions of the tools' text output, into frozen records.
``CachedCluster`` keeps short-lived copies for callers that ask often (the fence listener).

Imports stay light: the standard library only, and ElementTree and subprocess only when
first needed (``python3 -X importtime``: about 20 ms cold, most of it dataclasses and re;
the resource agent imports it only on the paths that run a cluster tool, never in a
monitor).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Optional, Protocol

from kvmha.errors import CommandFailed, KvmhaError

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET


def _xml(text: str) -> ET.Element:
    import xml.etree.ElementTree as ET  # lazy: the agent's monitor path never parses XML

    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise ClusterError(
            f"the cluster tools' output is not XML ({exc})",
            "check that pacemaker's tools work: crm_mon -1 --output-as=xml",
        ) from exc


class ClusterError(KvmhaError):
    """The cluster could not be asked or did not answer as expected."""


class ClusterNotRunning(ClusterError):
    def __init__(self) -> None:
        super().__init__(
            "the cluster is not running on this host",
            "run this on a cluster host, where pacemaker runs",
        )


# ---- records ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NodeState:
    name: str
    online: bool
    standby: bool
    unclean: bool
    is_dc: bool
    kind: str = "member"  # crm_mon's type: member, or remote (a Pacemaker Remote node)
    container: str | None = None  # a guest node: the resource that runs it (remote-node)


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

    @property
    def completed_at(self) -> Optional[float]:
        """When it completed, as a Unix time; None when not (yet) known."""
        return parse_time(self.completed)

    @property
    def powered_off(self) -> bool:
        """A successful off or reboot: the target's power was cut at completed_at."""
        return self.status == "success" and self.action in ("off", "reboot")


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

    def placement(self) -> dict[str, tuple[str, ...]]:
        """Resource id -> the nodes where it is active (any role)."""
        return {rid: r.nodes for rid, r in self.resources.items() if r.active}

    def last_fenced(self, node: str) -> Optional[float]:
        """When node's power was last cut by the fencer (a successful off or reboot)."""
        times = [
            t
            for e in self.fencing
            if e.target == node and e.powered_off and (t := e.completed_at) is not None
        ]
        return max(times) if times else None


@dataclasses.dataclass(frozen=True)
class Member:
    """One line of ``crm_node -l``: a node corosync knows, and whether it is a member now."""

    id: str
    name: str
    state: str  # "member", "lost", ...

    @property
    def is_member(self) -> bool:
        return self.state == "member"


@dataclasses.dataclass(frozen=True)
class GuestPrimitive:
    """A primitive of a guest agent in the configuration, with what the callers need."""

    id: str
    standard: str
    provider: str
    type: str
    params: dict[str, str]
    meta: dict[str, str]
    tags: frozenset[str]  # tags naming it or its group/clone


# ---- parsers (pure) --------------------------------------------------------------------
CRM_MON_ARGV = ["crm_mon", "-1", "--output-as=xml", "--include=default,fencing,failcounts"]
TIME_RE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.\d+)?(Z|[+-]\d\d:?\d\d)?\Z"
)


def parse_time(text: str) -> Optional[float]:
    """Pacemaker's time stamps ('2026-11-25 22:27:13Z', with offset or fraction) as Unix time.

    Fractions are dropped (rounded down): a comparison 'completed after t' made with it
    errs on the safe side only if t itself is not rounded up.
    """
    m = TIME_RE.match(text.strip())
    if not m:
        return None
    y, mo, d, h, mi, s, tz = m.groups()
    t = _days_from_civil(int(y), int(mo), int(d)) * 86400 + int(h) * 3600 + int(mi) * 60 + int(s)
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        t -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return float(t)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm; the
    calendar module would cost the importer a locale import)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _true(v: str | None) -> bool:
    return v == "true"


def _fence_events(root: ET.Element) -> list[FenceEvent]:
    return [
        FenceEvent(
            e.get("target", ""),
            e.get("action", ""),
            e.get("status", ""),
            e.get("delegate", ""),
            e.get("completed", ""),
        )
        for e in root.iter("fence_event")
    ]


def parse_crm_mon(xml_text: str) -> ClusterState:
    """Parse ``crm_mon -1 --output-as=xml --include=...`` (see CRM_MON_ARGV)."""
    root = _xml(xml_text)
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
            n.get("type") or "member",
            n.get("id_as_resource") or None,
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
    fence_root = root.find("fence_history")
    fencing = _fence_events(fence_root) if fence_root is not None else []
    fail_counts: dict[str, int] = {}
    for h in root.iterfind("node_history/node/resource_history"):
        count = h.get("fail-count")
        if count and count.isdigit():
            rid = h.get("id", "")
            fail_counts[rid] = fail_counts.get(rid, 0) + int(count)
    opts = root.find("summary/cluster_options")
    stonith = opts is None or opts.get("stonith-enabled", "true") == "true"
    return ClusterState(quorate, dc, nodes, resources, fencing, fail_counts, stonith)


def parse_fence_history(xml_text: str) -> list[FenceEvent]:
    """Parse ``stonith_admin --history=* --output-as=xml``."""
    return _fence_events(_xml(xml_text))


def parse_crm_node_list(text: str) -> list[Member]:
    """Parse ``crm_node -l``: 'id name state' lines (older versions omit the state)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            out.append(Member(fields[0], fields[1], fields[2] if len(fields) > 2 else "member"))
    return out


CMAP_RE = re.compile(r"nodelist\.node\.(\d+)\.(\w+) \(\w+\) = (.*)\Z")


def parse_corosync_nodelist(text: str) -> dict[str, str]:
    """Parse ``corosync-cmapctl -b nodelist.node``: node name -> its first ring address."""
    nodes: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        m = CMAP_RE.match(line.strip())
        if m:
            nodes.setdefault(m.group(1), {})[m.group(2)] = m.group(3).strip()
    out = {}
    for fields in nodes.values():
        addr = fields.get("ring0_addr", "")
        name = fields.get("name") or addr
        if name:
            out[name] = addr
    return out


def _nvs(el: ET.Element, section: str) -> dict[str, str]:
    return {nv.get("name", ""): nv.get("value", "") for nv in el.iterfind(f"{section}/nvpair")}


def guest_primitives(cib: ET.Element, agents: set[tuple[str, str]]) -> list[GuestPrimitive]:
    """The primitives whose (provider, type) is in agents, with params, meta and tags.

    cib is the whole CIB or its configuration section.
    """
    conf = cib if cib.tag == "configuration" else cib.find(".//configuration")
    if conf is None:
        return []
    tags: dict[str, set[str]] = {}
    for tag in conf.iterfind("tags/tag"):
        for ref in tag.iterfind("obj_ref"):
            tags.setdefault(ref.get("id", ""), set()).add(tag.get("id", ""))
    res = conf.find("resources")
    if res is None:
        return []
    parents: dict[str, str] = {}
    for parent in res.iter():
        if parent.tag in ("group", "clone", "master", "bundle"):
            for child in parent.iter("primitive"):
                parents[child.get("id", "")] = parent.get("id", "")
    out = []
    for prim in res.iter("primitive"):
        if (prim.get("provider", ""), prim.get("type", "")) not in agents:
            continue
        rid = prim.get("id", "")
        mytags = set(tags.get(rid, set()))
        if rid in parents:
            mytags |= tags.get(parents[rid], set())
        out.append(
            GuestPrimitive(
                rid,
                prim.get("class", ""),
                prim.get("provider", ""),
                prim.get("type", ""),
                _nvs(prim, "instance_attributes"),
                _nvs(prim, "meta_attributes"),
                frozenset(mytags),
            )
        )
    return out


def guest_node_names(cib: ET.Element) -> set[str]:
    """Pacemaker Remote nodes that run inside a cluster resource (meta remote-node)."""
    return {
        nv.get("value", "")
        for nv in cib.iterfind("configuration/resources//primitive/meta_attributes/nvpair")
        if nv.get("name") == "remote-node" and nv.get("value")
    }


def node_names(cib: ET.Element) -> list[str]:
    """The hosts: the nodes section without guest nodes. A guest node (Pacemaker Remote
    inside a guest) gets an entry there once an attribute is set on it; it is no host (no
    capacity, no guests of its own). A remote node that is not a guest stays a host: it
    may be a hypervisor that runs guests."""
    guests = guest_node_names(cib)
    return sorted(
        n.get("uname", "")
        for n in cib.iterfind("configuration/nodes/node")
        if n.get("uname", "") not in guests
    )


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
    return _nvs(prim, section)


# ---- the runner seam -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str = ""


class Runner(Protocol):
    def __call__(self, argv: Sequence[str], timeout: float) -> Result: ...


def subprocess_runner(argv: Sequence[str], timeout: float) -> Result:
    """Run a tool with a service's environment (kvmha.process.run: no shell, bounded)."""
    from kvmha.process import clean_env, run

    r = run(argv, timeout=timeout, check=False, env=clean_env())
    return Result(r.returncode, r.stdout or "", r.stderr or "")


_runner: Runner = subprocess_runner
_runner_lock = threading.Lock()


@contextlib.contextmanager
def use_runner(runner: Runner) -> Iterator[Runner]:
    """Run every cluster tool through runner inside the block (tests)."""
    global _runner
    with _runner_lock:
        old, _runner = _runner, runner
    try:
        yield runner
    finally:
        with _runner_lock:
            _runner = old


NOT_CONNECTED = 102  # CRM_EX_NOT_CONNECTED: no cluster to talk to


def _tool(argv: list[str], timeout: float = 30.0) -> str:
    r = _runner(argv, timeout)
    if r.returncode == 0:
        return r.stdout
    text = r.stderr + r.stdout
    if (
        r.returncode == NOT_CONNECTED
        or "Could not connect to the CIB" in text
        or ("is pacemaker running" in text)
    ):
        raise ClusterNotRunning()
    raise CommandFailed(argv, r.returncode, text)


# ---- reading ---------------------------------------------------------------------------
def cluster_state(timeout: float = 30.0) -> ClusterState:
    """The local cluster's computed state (crm_mon)."""
    return parse_crm_mon(_tool(CRM_MON_ARGV, timeout))


def query_cib(section: str | None = None, timeout: float = 30.0) -> ET.Element:
    """The whole CIB (configuration and status), or one section of it."""
    argv = ["cibadmin", "-Q"] if section is None else ["cibadmin", "-Q", "-o", section]
    return _xml(_tool(argv, timeout))


def fence_history(node: str = "*", timeout: float = 30.0) -> list[FenceEvent]:
    """The fencer's history for node (all nodes by default), from stonith_admin."""
    return parse_fence_history(
        _tool(["stonith_admin", f"--history={node}", "--output-as=xml"], timeout)
    )


def members(timeout: float = 10.0) -> list[Member]:
    """The nodes corosync knows (crm_node -l), members now or not."""
    return parse_crm_node_list(_tool(["crm_node", "-l"], timeout))


def local_node_name(timeout: float = 10.0) -> str:
    """This host's node name in the cluster (crm_node -n)."""
    return _tool(["crm_node", "-n"], timeout).strip()


def corosync_nodelist(timeout: float = 10.0) -> dict[str, str]:
    """The configured nodes (corosync.conf's nodelist, as corosync runs it): name -> address."""
    return parse_corosync_nodelist(_tool(["corosync-cmapctl", "-b", "nodelist.node"], timeout))


# ---- changing --------------------------------------------------------------------------
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


def set_target_role(rid: str, role: str, timeout: float = 30.0) -> None:
    """Ask the cluster to keep rid Stopped or Started (its target-role meta attribute)."""
    crm_resource(
        "--resource",
        rid,
        "--meta",
        "--set-parameter",
        "target-role",
        "--parameter-value",
        role,
        timeout=timeout,
    )


# ---- caching ---------------------------------------------------------------------------
class CachedCluster:
    """The local cluster with short caches, for a caller that asks many times a second.

    ``state()`` is crm_mon's computed state (``status_ttl``), None when the cluster
    cannot be asked; ``configuration()`` the CIB's configuration section (``cib_ttl``);
    on a failure the last configuration read is kept (a known one beats none), but a
    state never is (what runs where must be fresh). ``hosts()`` is every node the
    cluster knows: the CIB's and crm_mon's nodes, crm_node -l and corosync's nodelist,
    with the addresses corosync has for them.
    """

    def __init__(
        self, cib_ttl: float = 5.0, status_ttl: float = 1.0, timeout: float = 15.0
    ) -> None:
        self.cib_ttl = cib_ttl
        self.status_ttl = status_ttl
        self.timeout = timeout
        self._lock = threading.Lock()
        self._state: tuple[float, Optional[ClusterState]] = (-1e9, None)
        self._conf: tuple[float, Optional[ET.Element]] = (-1e9, None)
        self._hosts: tuple[float, dict[str, str]] = (-1e9, {})

    def state(self) -> Optional[ClusterState]:
        with self._lock:
            at, cached = self._state
            if time.monotonic() - at < self.status_ttl:
                return cached
            try:
                cached = parse_crm_mon(_tool(CRM_MON_ARGV, self.timeout))
            except KvmhaError:
                cached = None
            self._state = (time.monotonic(), cached)
            return cached

    def configuration(self) -> Optional[ET.Element]:
        with self._lock:
            at, cached = self._conf
            if time.monotonic() - at < self.cib_ttl:
                return cached
            try:
                cached = _xml(_tool(["cibadmin", "-Q", "-o", "configuration"], self.timeout))
            except KvmhaError:
                return cached
            self._conf = (time.monotonic(), cached)
            return cached

    def hosts(self) -> dict[str, str]:
        """Every host the cluster knows -> its corosync address ('' when unknown); guest
        nodes (crm_mon's id_as_resource: Pacemaker Remote inside a guest) are not hosts."""
        st = self.state()
        with self._lock:
            at, cached = self._hosts
            if time.monotonic() - at >= self.cib_ttl:
                found: dict[str, str] = {}
                with contextlib.suppress(KvmhaError):
                    found.update(
                        parse_corosync_nodelist(
                            _tool(["corosync-cmapctl", "-b", "nodelist.node"], self.timeout)
                        )
                    )
                with contextlib.suppress(KvmhaError):
                    for m in parse_crm_node_list(_tool(["crm_node", "-l"], self.timeout)):
                        found.setdefault(m.name, "")
                if found:  # a failed read keeps the last known list: a member never vanishes
                    cached = {**cached, **found}
                    self._hosts = (time.monotonic(), cached)
        out = dict(cached)
        if st is not None:
            for n, node in st.nodes.items():
                if node.container is not None:
                    out.pop(n, None)  # a guest node runs inside a guest: never a host
                else:
                    out.setdefault(n, "")
        return out

    def invalidate(self) -> None:
        """Forget the cached state (after a change, the next read asks again)."""
        with self._lock:
            self._state = (-1e9, self._state[1])

    def set_target_role(self, rid: str, role: str) -> None:
        set_target_role(rid, role, self.timeout * 2)
        self.invalidate()


# ---- the resource agent's calls (ocf:kvmha:Guest imports this module lazily, only on
# the paths below: never in a plain monitor) -----------------------------------------------
def set_utilization(rsc: str, key: str, value: str | None, timeout: float = 10.0) -> None:
    """Set one utilization attribute of a resource, or remove it (value None)."""
    args = ["--resource", rsc, "--utilization"]
    if value is None:
        args += ["--delete-parameter", key]
    else:
        args += ["--set-parameter", key, "--parameter-value", value]
    crm_resource(*args, timeout=timeout)


def member_names(timeout: float = 10.0) -> list[str]:
    """Names of the nodes that are cluster members now (crm_node -l, lost ones left out)."""
    return [m.name for m in members(timeout) if m.is_member]
