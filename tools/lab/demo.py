"""The demo: a host with guests loses power, and the cluster brings its guests back.

Prints a timeline measured from the power cut: when the survivors noticed, when the
host was fenced through the lab power switch, and when each guest ran again elsewhere
(Pacemaker reports it started, and the guest printed its readiness marker).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kvmha.errors import KvmhaError
from kvmha.tools.lab.lab import Lab

POLL = 0.2


def pick_victim(lab: Lab) -> tuple[str, list[str]]:
    st = lab.cluster_state()
    if st is None:
        raise KvmhaError("no host of the lab answers", "run 'kvmha lab up'")
    placement: dict[str, list[str]] = {}
    for g in lab.cfg.guest_names():
        host = st.running_on(g)
        if host:
            placement.setdefault(host, []).append(g)
    if not placement:
        raise KvmhaError("no guest is running in the lab", "see 'kvmha lab status'")
    # a host that is not the DC shows the common case (no DC election on top)
    candidates = sorted(placement, key=lambda h: (h == st.dc, h))
    victim = candidates[0]
    return victim, placement[victim]


def measure_failover(
    lab: Lab, victim: str, guests: list[str], timeout: float = 180.0
) -> dict[str, Any]:
    """Cut victim's power and time detection, fencing and each guest's recovery."""
    survivors = [h for h in lab.cfg.host_names() if h != victim and lab.powered(h)]
    offsets = {g: lab.serial_log_size(g) for g in guests}
    events_before = len(lab.power_events())
    lab.power_cut(victim)
    cut = [e for e in lab.power_events()[events_before:] if e["action"] == "off"]
    t0 = float(cut[0]["t"]) if cut else time.time()
    detected = fenced = None
    started: dict[str, float] = {}
    ready: dict[str, float] = {}
    new_host: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.time()
        st = lab.cluster_state(prefer=survivors[0])
        if st is not None:
            node = st.nodes.get(victim)
            if detected is None and node is not None and not node.online:
                detected = now
            for g in guests:
                host = st.running_on(g)
                if g not in started and host and host != victim:
                    started[g] = now
                    new_host[g] = host
        if fenced is None:
            for e in lab.power_events()[events_before:]:
                if e["host"] == victim and e["origin"] == "fence" and e["result"] == "ok":
                    fenced = float(e["done"])
        for g in guests:
            if g in started and g not in ready and lab.guest_ready_since(g, offsets[g]):
                ready[g] = time.time()
        if fenced is not None and len(ready) == len(guests):
            break
        time.sleep(POLL)
    else:
        raise KvmhaError(
            f"guests {sorted(set(guests) - set(ready))} did not come back "
            f"within {timeout:.0f} s",
            "see 'kvmha lab status' and 'kvmha lab logs'",
        )

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 2)

    return {
        "victim": victim,
        "token_ms": lab.cfg.token_ms,
        "agent": lab.cfg.agent,
        "detected_s": rel(detected),
        "fenced_s": rel(fenced),
        "guests": [
            {
                "name": g,
                "new_host": new_host[g],
                "started_s": rel(started[g]),
                "ready_s": rel(ready[g]),
            }
            for g in guests
        ],
    }


def format_timeline(result: dict[str, Any]) -> str:
    lines = [f"  {0.0:6.1f} s  power cut: {result['victim']}"]
    if result["detected_s"] is not None:
        lines.append(
            f"  {result['detected_s']:6.1f} s  failure detected: the survivors see "
            f"{result['victim']} offline"
        )
    if result["fenced_s"] is not None:
        lines.append(
            f"  {result['fenced_s']:6.1f} s  {result['victim']} fenced through the "
            "lab power switch"
        )
    for g in result["guests"]:
        lines.append(f"  {g['started_s']:6.1f} s  {g['name']} started on {g['new_host']}")
        lines.append(
            f"  {g['ready_s']:6.1f} s  {g['name']} ready (booted, guest agent and " "HTTP up)"
        )
    return "\n".join(lines)


def run_demo(lab: Lab, hosts: int, guests: int, agent: str, json_file: Path | None) -> None:
    t_up = time.monotonic()
    lab.up(hosts, guests, agent)
    up_s = time.monotonic() - t_up
    victim, victims_guests = pick_victim(lab)
    print(
        f"\nkvmha demo: {hosts} hosts, {guests} guests under "
        f"{'ocf:kvmha:Guest' if agent == 'Guest' else 'ocf:heartbeat:VirtualDomain'}, "
        f"corosync token {lab.cfg.token_ms} ms (lab up in {up_s:.1f} s)"
    )
    print(f"cutting the power of {victim}, which runs {', '.join(victims_guests)}\n")
    result = measure_failover(lab, victim, victims_guests)
    result["lab_up_s"] = round(up_s, 1)
    print(format_timeline(result))
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nThe lab stays up: 'kvmha lab status', 'kvmha lab power-on {victim}', "
        "'kvmha lab exec host1 -- crm_mon -1'."
    )
    print("Take it down with 'kvmha lab down'.")
