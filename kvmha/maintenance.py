"""Host maintenance and cluster-wide freeze, with Pacemaker doing the moving.

- evacuate: the host is put in standby with ``migration-limit`` set to the wanted
  parallelism, so Pacemaker itself live-migrates every guest off (allow-migrate), never
  more than N at once from that host, to the hosts its scheduler picks (priority,
  affinity, data centres and capacity all hold). Before anything changes, the same
  standby is simulated on a copy of the CIB (``kvmha.plan``): when a guest could not
  move, evacuate refuses, naming it and why (``--force`` goes ahead; that guest stops).
  The guests it moved are remembered in the host's node attribute ``kvmha-evacuated``.
- return: standby off; ``--move-back`` live-migrates the remembered guests back.
- freeze / thaw: ``maintenance-mode=true``: Pacemaker neither recovers nor moves
  anything (monitors stop too); ``kvmha status`` shows a banner while frozen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any, Optional

from kvmha import pcmk, placement, plan
from kvmha.errors import KvmhaError, UsageError
from kvmha.guests import guest_primitives, require_host

EVACUATED_ATTR = "kvmha-evacuated"
MAX_PARALLEL = 16


@dataclasses.dataclass
class Move:
    guest: str
    to: Optional[str]
    live: bool
    reason: str


def _usable_hosts(st: pcmk.ClusterState) -> list[str]:
    return sorted(n for n, s in st.nodes.items() if s.online and not s.standby)


def evacuation_plan(cib_text: str, host: str) -> tuple[list[Move], list[Move]]:
    """(moves, stuck): where Pacemaker would put each guest of host in standby."""
    cib = ET.fromstring(cib_text)
    base = plan.simulate(cib_text)
    copy = ET.fromstring(base.cib)
    placement.apply_copy(copy, [placement.SetNodeAttr(host, "standby", "on")])
    res = plan.simulate(ET.tostring(copy, encoding="unicode"))
    res.placement_before = base.placement
    settled = ET.fromstring(res.cib)
    ha = set(plan._ha_guests(settled))
    down = {g for g in ha if res.placement.get(g) is None}
    moves, stuck = [], []
    for g in sorted(guest_primitives(cib)):
        if base.placement.get(g) != host:
            continue
        to = res.placement.get(g)
        if to is None:
            stuck.append(Move(g, None, False, plan.why_down(settled, g, res, [host], True, down)))
        else:
            live = res.actions.get(g) == "migrate"
            moves.append(Move(g, to, live, "live migration" if live else "restart (stop, start)"))
    return moves, stuck


def evacuate(
    host: str,
    parallel: int,
    wait_s: Optional[float],
    force: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    if not 1 <= parallel <= MAX_PARALLEL:
        raise UsageError(f"--parallel {parallel} is out of range", f"use 1 to {MAX_PARALLEL}")
    cib = pcmk.query_cib()
    require_host(cib, host)
    st = pcmk.cluster_state()
    if host not in st.nodes or not st.nodes[host].online:
        raise UsageError(f"{host} is not online", "only an online host can be evacuated")
    others = [h for h in _usable_hosts(st) if h != host]
    if not others:
        raise UsageError(
            f"{host} is the last host that can run guests",
            "bring another host online (or out of standby) first",
        )
    moves, stuck = evacuation_plan(ET.tostring(cib, encoding="unicode"), host)
    for m in moves:
        say(f"{m.guest}: to {m.to} ({m.reason})")
    for m in stuck:
        say(f"{m.guest}: cannot move: {m.reason}")
    if stuck and not force:
        raise KvmhaError(
            f"{len(stuck)} guest{'s' if len(stuck) > 1 else ''} of {host} could not move "
            f"({', '.join(m.guest for m in stuck)}): nothing changed",
            "make room (kvmha plan), or use --force to stop them",
        )
    if stuck:
        plan.record_override(stuck[0].guest, f"evacuate {host}", stuck[0].reason)
    old_limit = placement.property_value(cib, "migration-limit")
    pcmk.crm_attribute(
        "--type", "crm_config", "--name", "migration-limit", "--update", str(parallel)
    )
    pcmk.crm_attribute(
        "--type",
        "nodes",
        "--node",
        host,
        "--name",
        EVACUATED_ATTR,
        "--update",
        ",".join(m.guest for m in moves) or "-",
    )
    pcmk.crm_attribute("--type", "nodes", "--node", host, "--name", "standby", "--update", "on")
    say(f"{host} in standby; Pacemaker moves its guests, at most {parallel} at once")
    result: dict[str, Any] = {
        "schema": "kvmha.host-evacuate.v1",
        "host": host,
        "parallel": parallel,
        "planned": [dataclasses.asdict(m) for m in moves],
        "stuck": [dataclasses.asdict(m) for m in stuck],
        "moved": [],
        "not_moved": [],
    }
    if wait_s is None:
        return result
    try:
        result.update(_watch(host, [m.guest for m in moves + stuck], wait_s, say))
    finally:
        if old_limit is None:
            pcmk.crm_attribute("--type", "crm_config", "--name", "migration-limit", "--delete")
        else:
            pcmk.crm_attribute(
                "--type", "crm_config", "--name", "migration-limit", "--update", old_limit
            )
    return result


def _watch(
    host: str, guests: list[str], wait_s: float, say: Callable[[str], None]
) -> dict[str, Any]:
    t0 = time.monotonic()
    done: dict[str, str] = {}
    moved, not_moved = [], []
    while True:
        st = pcmk.cluster_state()
        for g in guests:
            if g in done:
                continue
            where = st.running_on(g)
            if where is not None and where != host:
                done[g] = where
                say(f"{g}: runs on {where} ({time.monotonic() - t0:.1f} s)")
                moved.append({"guest": g, "to": where, "seconds": round(time.monotonic() - t0, 1)})
        if len(done) == len(guests):
            break
        if time.monotonic() - t0 > wait_s:
            break
        time.sleep(0.5)
    left = max(1, int(wait_s - (time.monotonic() - t0)))
    with contextlib.suppress(KvmhaError):
        pcmk.crm_resource("--wait", "--timeout", f"{left}s", timeout=left + 30)
    st = pcmk.cluster_state()
    for g in guests:
        if g not in done:
            where = st.running_on(g)
            not_moved.append(
                {"guest": g, "state": "stopped" if where is None else f"still on {where}"}
            )
            say(f"{g}: not moved ({not_moved[-1]['state']})")
    return {"moved": moved, "not_moved": not_moved, "seconds": round(time.monotonic() - t0, 1)}


def return_host(
    host: str, move_back: bool, wait_s: float, say: Callable[[str], None]
) -> dict[str, Any]:
    cib = pcmk.query_cib()
    require_host(cib, host)
    st = pcmk.cluster_state()
    node = st.nodes.get(host)
    if node is None or not node.online:
        raise UsageError(f"{host} is not online", "power it on and let it join first")
    remembered = pcmk.node_attribute(cib, host, EVACUATED_ATTR) or ""
    pcmk.crm_attribute("--type", "nodes", "--node", host, "--name", "standby", "--delete")
    say(f"{host} out of standby")
    out: dict[str, Any] = {
        "schema": "kvmha.host-return.v1",
        "host": host,
        "moved_back": [],
        "not_moved_back": [],
    }
    if move_back:
        from kvmha.livemigrate import migrate

        for g in [x for x in remembered.split(",") if x and x != "-"]:
            if g not in guest_primitives(cib):
                continue
            if pcmk.cluster_state().running_on(g) == host:
                continue
            try:
                took = migrate(g, host, lambda _p, _t: None, wait_s)
                say(f"{g}: back on {host} ({took:.1f} s)")
                out["moved_back"].append({"guest": g, "seconds": round(took, 1)})
            except KvmhaError as exc:
                say(f"{g}: not moved back: {exc.message}")
                out["not_moved_back"].append({"guest": g, "reason": exc.message})
    with contextlib.suppress(KvmhaError):
        pcmk.crm_attribute("--type", "nodes", "--node", host, "--name", EVACUATED_ATTR, "--delete")
    return out


def frozen(cib: ET.Element) -> bool:
    return (placement.property_value(cib, "maintenance-mode") or "false").lower() in (
        "true",
        "1",
        "yes",
        "on",
    )


def freeze() -> bool:
    """maintenance-mode on; False when it was on already."""
    if frozen(pcmk.query_cib()):
        return False
    pcmk.crm_attribute("--type", "crm_config", "--name", "maintenance-mode", "--update", "true")
    return True


def thaw() -> bool:
    if not frozen(pcmk.query_cib()):
        return False
    pcmk.crm_attribute("--type", "crm_config", "--name", "maintenance-mode", "--delete")
    return True


# ---- for kvmha status ------------------------------------------------------------------
def down_reasons(cib: ET.Element, guests: list[str]) -> dict[str, str]:
    """Why guests that should run stay down, once the cluster has done what it is about
    to do (crm_simulate on the live CIB; empty for guests that are merely starting)."""
    try:
        res = plan.simulate(ET.tostring(cib, encoding="unicode"))
    except KvmhaError:
        return {}
    settled = ET.fromstring(res.cib)
    down = {g for g in guests if res.placement.get(g) is None}
    return {g: plan.why_down(settled, g, res, [], True, down) for g in sorted(down)}


def status_extras(cib: ET.Element, st: pcmk.ClusterState) -> dict[str, Any]:
    """Frozen banner, each guest's priority/order/affinity, and damping alerts."""
    guests: dict[str, dict[str, Any]] = {}
    after = placement.after_edges(cib)
    affs = placement.affinities(cib)
    warnings = []
    for rid, prim in guest_primitives(cib).items():
        meta = pcmk.nvpairs(prim, "meta_attributes")
        apart = sorted(
            (a.b if a.a == rid else a.a) for a in affs if rid in (a.a, a.b) and not a.together
        )
        together = sorted(
            (a.b if a.a == rid else a.a) for a in affs if rid in (a.a, a.b) and a.together
        )
        guests[rid] = {
            "priority": placement.priority_of(prim),
            "after": sorted(after.get(rid, ())),
            "apart_from": apart,
            "together_with": together,
        }
        threshold = meta.get("migration-threshold")
        fails = st.fail_counts.get(rid, 0)
        wanted = meta.get("target-role", "Started").lower() != "stopped"
        if threshold and threshold.isdigit() and fails >= int(threshold) and wanted:
            if st.running_on(rid) is None:
                warnings.append(
                    {
                        "code": "guest-given-up",
                        "message": f"{rid} failed {fails} times (migration-threshold {threshold}) "
                        "on every host it may use: the cluster stopped it",
                        "fix": f"find the cause, then 'pcs resource cleanup {rid}'",
                    }
                )
            else:
                warnings.append(
                    {
                        "code": "guest-moved-after-failures",
                        "message": f"{rid} failed {fails} times: moved away from the host where "
                        "it kept failing",
                        "fix": f"'pcs resource cleanup {rid}' once fixed",
                    }
                )
    wanted_down = [
        rid
        for rid, prim in guest_primitives(cib).items()
        if st.running_on(rid) is None
        and pcmk.nvpairs(prim, "meta_attributes").get("target-role", "Started").lower() != "stopped"
    ]
    if wanted_down and not frozen(cib):
        for rid, reason in down_reasons(cib, wanted_down).items():
            guests[rid]["down_reason"] = reason
            warnings.append(
                {
                    "code": "guest-down",
                    "message": f"{rid} stays down: {reason}",
                    "fix": "kvmha plan shows what would make it fit",
                }
            )
    if frozen(cib):
        warnings.insert(
            0,
            {
                "code": "ha-frozen",
                "message": "HA is frozen (maintenance-mode): nothing is recovered or moved",
                "fix": "kvmha ha thaw",
            },
        )
    return {"frozen": frozen(cib), "guests": guests, "warnings": warnings}
