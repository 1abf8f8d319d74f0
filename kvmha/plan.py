"""What happens if hosts fail now: Pacemaker's own scheduler, asked through crm_simulate.

A plan copies the live CIB (``cibadmin -Q``), lets crm_simulate settle it (whatever the
cluster is about to do anyway), then for each scenario marks the hosts failed with
``crm_simulate --node-fail`` (the node leaves the membership unclean, so the scheduler
schedules fencing and the simulation executes it as successful), sets quorum the way
corosync's votequorum would count it (surviving votes > half of all hosts), and runs
transitions until the cluster is quiet. Where each guest runs afterwards, the order in
which starts were executed, and what each start waited for come from crm_simulate's
XML output and transition graph. Nothing here decides a placement: for a guest that
stays down, the reason is found by checking the rules that Pacemaker applied (quorum,
fencing, data centre, ordering, colocation, utilization against capacity) against
crm_simulate's result; when none explains it, the plan says so.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

from kvmha import datacentre, pcmk, placement
from kvmha.errors import CommandFailed, KvmhaError, UsageError
from kvmha.process import clean_env, run

SCHEMA = "kvmha.plan.v1"  # docs/schemas/plan.v1.json
MAX_ROUNDS = 6
SIM_TIMEOUT = 300.0


@dataclasses.dataclass
class SimResult:
    cib: str  # the CIB after the simulation (input for the next one)
    placement: dict[str, Optional[str]]  # resource -> host (None: stopped)
    roles: dict[str, str]
    online: list[str]
    starts: list[tuple[str, str]]  # (resource, host) in executed order
    waits: dict[str, set[str]]  # resource -> resources whose start its start waited for
    fenced: list[str]
    rounds: int
    placement_before: dict[str, Optional[str]] = dataclasses.field(default_factory=dict)
    actions: dict[str, str] = dataclasses.field(default_factory=dict)  # rsc -> migrate, move...
    blocked: bool = False  # a transition could not complete (crm_simulate: terminated)


def _status(el: Optional[ET.Element]) -> tuple[dict[str, Optional[str]], dict[str, str], list[str]]:
    """(resource -> host it runs on, roles, hosts that may take resources). A resource
    shown on an unclean or offline host does not run anywhere that counts."""
    where: dict[str, Optional[str]] = {}
    roles: dict[str, str] = {}
    up: set[str] = set()
    usable: list[str] = []
    if el is None:
        return where, roles, usable
    for n in el.iterfind("nodes/node"):
        if n.get("online") == "true" and n.get("unclean") != "true":
            up.add(n.get("name", ""))
            if n.get("standby") != "true" and n.get("maintenance") != "true":
                usable.append(n.get("name", ""))
    for r in el.iter("resource"):
        rid = r.get("id", "")
        hosts = [x.get("name", "") for x in r.iterfind("node")]
        active = r.get("active") == "true" and r.get("role") in ("Started", "Promoted")
        where[rid] = hosts[0] if active and len(hosts) == 1 and hosts[0] in up else None
        roles[rid] = r.get("role", "")
    return where, roles, sorted(usable)


def fenceable(cib: ET.Element, host: str) -> bool:
    """Could a fence device fence host? (stonith disabled: no fencing is needed)."""
    stonith = (placement.property_value(cib, "stonith-enabled") or "true").lower()
    if stonith not in ("true", "1", "yes", "on"):
        return True
    for p in pcmk.primitives(cib).values():
        if p.get("class") != "stonith":
            continue
        attrs = pcmk.nvpairs(p, "instance_attributes")
        if "pcmk_host_list" in attrs:
            if host in attrs["pcmk_host_list"].replace(",", " ").split():
                return True
        elif "pcmk_host_map" in attrs:
            mapped = [
                x.split(":", 1)[0].strip() for x in attrs["pcmk_host_map"].replace(";", " ").split()
            ]
            if host in mapped:
                return True
        else:
            return True  # the device lists its targets itself (dynamic-list)
    return False


def _graph_waits(graph: Path) -> dict[str, set[str]]:
    """For every start (or migrate_from) in the graph, the resources whose start it
    waits for, through pseudo actions."""
    try:
        root = ET.parse(graph).getroot()
    except (OSError, ET.ParseError):
        return {}
    inputs: dict[str, list[str]] = {}
    kinds: dict[str, tuple[str, str, str]] = {}  # id -> (tag, resource, operation)
    for syn in root.iterfind("synapse"):
        for act in syn.find("action_set") or []:
            aid = act.get("id", "")
            prim = act.find("primitive")
            key = act.get("operation_key", "")
            rsc = prim.get("id", "") if prim is not None else key.rsplit("_", 2)[0]
            kinds[aid] = (act.tag, rsc, act.get("operation", ""))
            inputs[aid] = [t.get("id", "") for trig in syn.iterfind("inputs/trigger") for t in trig]
    out: dict[str, set[str]] = {}
    for aid, (tag, rsc, op) in kinds.items():
        if tag != "rsc_op" or op not in ("start", "migrate_from"):
            continue
        seen: set[str] = set()
        todo = list(inputs.get(aid, []))
        while todo:
            i = todo.pop()
            if i in seen:
                continue
            seen.add(i)
            t = kinds.get(i)
            if t is None:
                continue
            if t[0] == "rsc_op" and t[2] in ("start", "migrate_from") and t[1] != rsc:
                out.setdefault(rsc, set()).add(t[1])
            elif t[0] == "pseudo_event":
                todo.extend(inputs.get(i, []))
        out.setdefault(rsc, set())
    return out


def crm_simulate(cib: str, args: list[str], workdir: Path) -> tuple[ET.Element, str, Path]:
    """One crm_simulate -S run on cib: (its XML result, the output CIB, the graph file)."""
    src, out, graph = workdir / "in.xml", workdir / "out.xml", workdir / "graph.xml"
    src.write_text(cib)
    argv = ["crm_simulate", "--xml-file", str(src), "--simulate", "--output-as=xml"]
    argv += ["--save-output", str(out), "--save-graph", str(graph), *args]
    r = run(argv, timeout=SIM_TIMEOUT, check=False, env=clean_env())
    try:
        result = ET.fromstring(r.stdout)
    except ET.ParseError:
        raise CommandFailed(argv, r.returncode, r.stderr + r.stdout) from None
    # A transition that stops at an action it may not run (fencing without quorum) ends
    # with "Transition failed: terminated": the revised status is still the answer.
    if result.find("revised_cluster_status") is None or not out.exists():
        raise CommandFailed(argv, r.returncode, r.stderr + r.stdout)
    return result, out.read_text(), graph


def simulate(cib: str, fail: list[str] = (), quorum: bool = True) -> SimResult:  # type: ignore[assignment]
    """Fail the given hosts (none: just settle) and run transitions until quiet."""
    starts: list[tuple[str, str]] = []
    waits: dict[str, set[str]] = {}
    fenced: list[str] = []
    actions: dict[str, str] = {}
    blocked = False
    placement_: dict[str, Optional[str]] = {}
    roles: dict[str, str] = {}
    online: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kvmha-plan-") as d:
        workdir = Path(d)
        for rnd in range(1, MAX_ROUNDS + 1):
            args = ["--quorum", "true" if quorum else "false"]
            if rnd == 1:
                for h in fail:
                    args += ["--node-fail", h]
            result, cib, graph = crm_simulate(cib, args, workdir)
            if any("terminated" in (e.text or "") for e in result.iterfind("status/errors/error")):
                blocked = True
            done_anything = False
            for a in result.iterfind("actions/rsc_action"):
                actions.setdefault(a.get("resource", ""), a.get("action", ""))
            for a in result.iterfind("transition/*"):
                if a.tag == "fencing_action":
                    fenced.append(a.get("target", ""))
                    done_anything = True
                elif a.tag == "rsc_action":
                    done_anything = True
                    if a.get("op") in ("start", "migrate_from"):
                        starts.append((a.get("resource", ""), a.get("node", "")))
            for rsc, deps in _graph_waits(graph).items():
                waits.setdefault(rsc, set()).update(deps)
            placement_, roles, online = _status(result.find("revised_cluster_status"))
            if not done_anything:
                break
        return SimResult(
            cib,
            placement_,
            roles,
            online,
            starts,
            waits,
            fenced,
            rnd,
            actions=actions,
            blocked=blocked,
        )


# ---- the plan --------------------------------------------------------------------------
@dataclasses.dataclass
class GuestOutcome:
    name: str
    from_: Optional[str]
    to: Optional[str]
    order: Optional[int]
    reason: str
    action: str  # stays, restarts, moves, stops, stays-down
    priority: Optional[str]
    waits_for: list[str]
    ha: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "from": self.from_,
            "to": self.to,
            "order": self.order,
            "reason": self.reason,
            "action": self.action,
            "priority": self.priority,
            "waits_for": self.waits_for,
            "ha": self.ha,
        }


@dataclasses.dataclass
class Scenario:
    fail: list[str]
    guests: list[GuestOutcome]
    ok: bool
    quorate: bool
    summary: str

    def as_json(self) -> dict[str, Any]:
        return {
            "fail": self.fail,
            "guests": [g.as_json() for g in self.guests],
            "ok": self.ok,
            "quorate": self.quorate,
            "summary": self.summary,
        }


def _ha_guests(cib: ET.Element) -> dict[str, ET.Element]:
    """Guests the cluster should keep running (target-role not Stopped, managed)."""
    from kvmha.guests import guest_primitives

    out = {}
    for rid, prim in guest_primitives(cib).items():
        meta = pcmk.nvpairs(prim, "meta_attributes")
        if meta.get("target-role", "Started").lower() == "stopped":
            continue
        if meta.get("is-managed", "true").lower() == "false":
            continue
        out[rid] = prim
    return out


def _fmt_util(u: dict[str, int]) -> str:
    return ", ".join(
        f"{k} {v}" + (" MiB" if k.endswith("memory") else "") for k, v in sorted(u.items())
    )


def why_down(
    cib: ET.Element,
    guest: str,
    res: SimResult,
    fail: list[str],
    quorate: bool,
    down: set[str],
) -> str:
    """The rule that keeps guest stopped in res, checked against crm_simulate's result."""
    if not quorate:
        return "no quorum: the surviving hosts are not a majority, so they stop everything"
    unfenced = [h for h in fail if not fenceable(cib, h)]
    if unfenced and res.placement_before.get(guest) in unfenced:
        return (
            f"{unfenced[0]} cannot be fenced (no fence device covers it), so its guests "
            "are not recovered"
        )
    prim = pcmk.primitives(cib)[guest]
    survivors = [h for h in res.online if h not in fail]
    dc = datacentre.guest_dc(prim)
    if dc:
        in_dc = [h for h in survivors if pcmk.node_attribute(cib, h, datacentre.ATTR) == dc]
        if not in_dc:
            return f"data centre {dc} has no host left"
        survivors = in_dc
    deps = sorted(placement.after_edges(cib).get(guest, set()) & down)
    if deps:
        return f"starts after {', '.join(deps)}, which stays down"
    candidates = list(survivors)
    for aff in placement.affinities(cib):
        if guest not in (aff.a, aff.b) or not aff.hard:
            continue
        other = aff.b if aff.a == guest else aff.a
        where = res.placement.get(other)
        if aff.together:
            if where is None:
                return f"kept together with {other}, which stays down"
            candidates = [h for h in candidates if h == where]
            if not candidates:
                return f"kept together with {other} on {where}, which it cannot use"
    apart_from: list[str] = []
    for aff in placement.affinities(cib):
        if guest in (aff.a, aff.b) and aff.hard and not aff.together:
            other = aff.b if aff.a == guest else aff.a
            where = res.placement.get(other)
            if where in candidates:
                candidates.remove(where)
                apart_from.append(f"{other} (on {where})")
    if not candidates:
        if apart_from:
            return f"kept apart from {', '.join(apart_from)}: no other host left"
        return "no host left that may run it"
    need = placement.utilization(prim)
    strategy = placement.property_value(cib, "placement-strategy") or "default"
    if need and strategy != "default":
        caps = placement.node_utilization(cib)
        used: dict[str, dict[str, int]] = {h: {} for h in candidates}
        prims = pcmk.primitives(cib)
        for rid, host in res.placement.items():
            if host in used and rid in prims:
                for k, v in placement.utilization(prims[rid]).items():
                    used[host][k] = used[host].get(k, 0) + v
        free = {
            h: {k: caps.get(h, {}).get(k, 0) - used[h].get(k, 0) for k in need} for h in candidates
        }
        fits = [h for h in candidates if all(free[h][k] >= v for k, v in need.items())]
        if not fits:
            detail = "; ".join(f"{h} {_fmt_util(free[h])}" for h in candidates)
            text = f"no capacity: needs {_fmt_util(need)}; free: {detail}"
            undefined = sorted(k for k in need if all(k not in caps.get(h, {}) for h in candidates))
            if undefined:
                text += (
                    f" (no host defines {', '.join(undefined)}: Pacemaker counts it as 0; "
                    "`kvmha host capacity HOST` writes every kind the agent sets)"
                )
            if apart_from:
                text += f" (kept apart from {', '.join(apart_from)})"
            mine = _prio_score(prim)
            took = sorted(
                f"{rid} (priority {placement.priority_of(prims[rid])}) on {host}"
                for rid, host in res.placement.items()
                if host in candidates
                and rid in prims
                and (rid, host) in res.starts
                and _prio_score(prims[rid]) > mine
            )
            if took:
                text += f"; higher priority first: {', '.join(took)}"
            return text
    if res.blocked:
        return (
            "Pacemaker's transition could not complete (ordering rules and live "
            "migrations wait for each other): crm_simulate reports it terminated"
        )
    return (
        "the scheduler leaves it stopped (see its allocation scores: "
        "crm_simulate --live-check --show-scores)"
    )


def _prio_score(prim: ET.Element) -> int:
    raw = pcmk.nvpairs(prim, "meta_attributes").get("priority", "0")
    try:
        return int(raw)
    except ValueError:
        return 0


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def scenario(base: SimResult, cib: ET.Element, fail: list[str], total_hosts: int) -> Scenario:
    survivors = [h for h in base.online if h not in fail]
    quorate = 2 * len(survivors) > total_hosts
    unfenced = [h for h in fail if not fenceable(cib, h)]
    if unfenced and quorate:
        # crm_simulate assumes every fencing succeeds; with no device for a host it
        # cannot, and Pacemaker recovers nothing that waits for it: the transition stops
        # at the fencing. Plan it that way: nothing is executed.
        res = dataclasses.replace(
            base,
            placement={r: (None if h in fail else h) for r, h in base.placement.items()},
            starts=[],
            waits={},
            online=[h for h in base.online if h not in fail],
        )
    else:
        res = simulate(base.cib, fail, quorate)
    res.placement_before = base.placement
    ha = _ha_guests(cib)
    from kvmha.guests import guest_primitives

    all_guests = guest_primitives(cib)
    down = {g for g in ha if res.placement.get(g) is None}
    order: dict[str, int] = {}
    for rsc, _host in res.starts:
        if rsc in all_guests and rsc not in order:
            order[rsc] = len(order) + 1
    outcomes = []
    for g in sorted(all_guests):
        frm, to = base.placement.get(g), res.placement.get(g)
        prio = placement.priority_of(all_guests[g])
        waits = sorted(res.waits.get(g, set()) & set(all_guests))
        if g not in ha:
            action, reason = "stays-down", "stopped by the admin (target-role Stopped)"
            if to is not None:
                action, reason = "stays", "not managed by the cluster"
        elif to is None:
            action = "stops" if frm is not None and frm not in fail else "stays-down"
            reason = why_down(cib, g, res, fail, quorate, down)
        elif frm == to and g not in order:
            action, reason = "stays", f"keeps running on {to}"
        elif frm in fail or frm is None:
            action, reason = "restarts", f"restarts on {to}"
        else:
            action, reason = "moves", f"moves from {frm} to {to}"
        if waits and to is not None and g in order:
            reason += f" after {', '.join(waits)}"
        outcomes.append(
            GuestOutcome(g, frm, to, order.get(g), reason, action, prio, waits, g in ha)
        )
    ok = all(o.to is not None for o in outcomes if o.name in ha) and (
        not res.blocked or not quorate
    )
    summary = summary_line(fail, outcomes, ha)
    if res.blocked and quorate:
        summary += "; WARNING: the recovery transition could not complete (crm_simulate)"
    return Scenario(list(fail), outcomes, ok, quorate, summary)


def summary_line(fail: list[str], outcomes: list[GuestOutcome], ha: dict[str, Any]) -> str:
    who = " and ".join(fail) if fail else "no host"
    moving = sorted(
        (o for o in outcomes if o.action in ("restarts", "moves")), key=lambda o: o.order or 0
    )
    lost = [o for o in outcomes if o.name in ha and o.to is None]
    parts = []
    for o in moving:
        nth = f" ({_ordinal(o.order)})" if o.order else ""
        verb = "restarts on" if o.action == "restarts" else f"moves from {o.from_} to"
        parts.append(f"{o.name} {verb} {o.to}{nth}")
    for o in lost:
        parts.append(f"{o.name} {'stops' if o.action == 'stops' else 'stays down'}: {o.reason}")
    head = f"if {who} {'fails' if len(fail) == 1 else 'fail'}: "
    if not parts:
        return head + "every guest keeps running where it is"
    return head + "; ".join(parts)


@dataclasses.dataclass
class Plan:
    scenarios: list[Scenario]
    pending: list[tuple[str, str]]  # starts the cluster is about to do anyway
    tolerate: Optional[int] = None

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.scenarios)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "scenarios": [s.as_json() for s in self.scenarios],
            "ok": self.ok,
            "pending_starts": [{"guest": g, "host": h} for g, h in self.pending],
        }
        if self.tolerate is not None:
            out["tolerate"] = self.tolerate
        return out


def failure_sets(
    cib: ET.Element, base: SimResult, fail: Optional[list[str]], tolerate: Optional[int]
) -> list[list[str]]:
    hosts = pcmk.node_names(cib)
    if fail is not None:
        for h in fail:
            if h not in hosts:
                raise UsageError(f"unknown host {h!r}", f"cluster hosts: {', '.join(hosts)}")
        if len(set(fail)) != len(fail):
            raise UsageError("a host is named twice in --fail")
        return [list(fail)]
    up = [h for h in base.online if h in hosts]
    n = 1 if tolerate is None else tolerate
    if n < 1:
        raise UsageError("--tolerate must be at least 1")
    if n >= len(hosts) or n > len(up):
        raise UsageError(
            f"--tolerate {n} is too large for a cluster of {len(hosts)} hosts "
            f"({len(up)} online)",
            f"use 1 to {max(1, min(len(hosts) - 1, len(up)))}",
        )
    return [list(c) for c in itertools.combinations(up, n)]


def make_plan(
    cib_text: str,
    fail: Optional[list[str]] = None,
    tolerate: Optional[int] = None,
    workers: Optional[int] = None,
) -> Plan:
    cib = ET.fromstring(cib_text)
    total = len(pcmk.node_names(cib))
    base = simulate(cib_text, [], quorum=True) if total else None
    if base is None:
        raise KvmhaError("the cluster has no hosts")
    sets = failure_sets(cib, base, fail, tolerate)
    settled = ET.fromstring(base.cib)
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        scenarios = list(pool.map(lambda f: scenario(base, settled, f, total), sets))
    return Plan(scenarios, base.starts, tolerate)


def live_cib_text() -> str:
    return ET.tostring(pcmk.query_cib(), encoding="unicode")


def text_report(p: Plan) -> list[str]:
    lines = []
    if p.pending:
        lines.append(
            "pending (the cluster does this anyway first): "
            + ", ".join(f"{g} starts on {h}" for g, h in p.pending)
        )
    for s in p.scenarios:
        lines.append(s.summary)
    return lines


# ---- admission control -----------------------------------------------------------------
def _lost(p: Plan) -> set[tuple[tuple[str, ...], str]]:
    return {(tuple(s.fail), g.name) for s in p.scenarios for g in s.guests if g.ha and g.to is None}


def _lost_now(res: SimResult) -> set[str]:
    settled = ET.fromstring(res.cib)
    return {g for g in _ha_guests(settled) if res.placement.get(g) is None}


def admission(
    cib_text: str, changes: list[placement.Change], guest: str, tolerate: int
) -> tuple[bool, str, Plan]:
    """Would changes make things worse? After them, every HA guest that runs (or would
    run) now must still run, and no host-failure scenario of tolerate hosts may leave an
    HA guest down that it did not leave down before. (ok, one-line reason, the plan)."""
    cib = ET.fromstring(cib_text)
    placement.apply_copy(cib, changes)
    text = ET.tostring(cib, encoding="unicode")
    hosts = len(pcmk.node_names(cib))
    tolerate = min(tolerate, max(0, hosts - 1))
    before = simulate(cib_text, [], quorum=True)
    after = simulate(text, [], quorum=True)
    newly_down = sorted(_lost_now(after) - _lost_now(before))
    if newly_down:
        settled = ET.fromstring(after.cib)
        down = _lost_now(after)
        reasons = [f"{g}: {why_down(settled, g, after, [], True, down)}" for g in newly_down]
        if newly_down == [guest]:
            msg = f"{guest} could not run: {reasons[0].split(': ', 1)[1]}"
        else:
            msg = f"the change would leave guests stopped now: {'; '.join(reasons)}"
        return False, msg, Plan([], after.starts, tolerate)
    if tolerate == 0:
        return True, "", Plan([], after.starts, 0)
    p_after = make_plan(text, None, tolerate)
    if p_after.ok:
        return True, "", p_after
    p_before = make_plan(cib_text, None, tolerate)
    worse = _lost(p_after) - _lost(p_before)
    if not worse:
        return True, "", p_after
    fail, _g = sorted(worse)[0]
    s = next(x for x in p_after.scenarios if tuple(x.fail) == fail)
    names = ", ".join(f"{g.name} ({g.reason})" for g in s.guests if (fail, g.name) in worse)
    return (
        False,
        f"afterwards the cluster could not survive the loss of {tolerate} "
        f"host{'s' if tolerate > 1 else ''}: if {' and '.join(fail)} "
        f"{'fails' if len(fail) == 1 else 'fail'}, {names} would stay down",
        p_after,
    )


def record_override(guest: str, what: str, reason: str) -> None:
    """An admission override, kept in the CIB (meta attribute of the guest) and in the log."""
    import time

    from kvmha import pcmk as _pcmk

    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or "root"
    note = f"{stamp} {what} forced by {user}: {reason}"
    _pcmk.crm_resource(
        "--resource",
        guest,
        "--meta",
        "--set-parameter",
        "kvmha-admission-override",
        "--parameter-value",
        note[:500],
    )
    try:
        import syslog

        syslog.openlog("kvmha", 0, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_WARNING, f"admission override for {guest}: {note}")
    except OSError:
        pass
