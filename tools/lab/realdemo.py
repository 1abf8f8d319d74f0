"""The real-guest demo: a guest cluster serving HTTP, and the host of its serving member
loses power.

Timeline, measured from the power cut: the host cluster notices and fences the host
(lab power switch); the guest cluster notices its member gone and fences it through
kvmha (fence_kvmha -> a host's fence listener, which answers "off" only once the host
was fenced); nginx and its address start on a surviving member; the host cluster
restarts the member on another host and it rejoins the guest cluster.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kvmha.errors import KvmhaError
from kvmha.tools.lab.guestexec import running_on
from kvmha.tools.lab.lab import Lab
from kvmha.tools.lab.realcluster import RealGuestCluster


def _audit(lab: Lab) -> list[dict[str, Any]]:
    out = []
    for h in lab.cfg.host_names():
        f = lab.cfg.host_dir(h) / "var/log/kvmha/fence-audit.log"
        if f.exists():
            out += [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    return out


def measure(lab: Lab, gc: RealGuestCluster, timeout: float = 900.0) -> dict[str, Any]:
    st = gc.state()
    member = gc.service_node(st)
    if member is None:
        raise KvmhaError("the guest cluster serves nothing", "see 'kvmha lab status'")
    hosts = running_on(lab.cfg, member)
    if len(hosts) != 1:
        raise KvmhaError(f"{member} runs on {hosts}", "see 'kvmha lab status'")
    victim = hosts[0]
    survivors = [h for h in lab.cfg.host_names() if h != victim]
    events_before = len(lab.power_events())
    audit_before = len(_audit(lab))
    print(f"cutting the power of {victim}, which runs {member}, the member serving HTTP\n")
    lab.power_cut(victim)
    cut = [e for e in lab.power_events()[events_before:] if e["action"] == "off"]
    t0 = float(cut[0]["t"]) if cut else time.time()
    marks: dict[str, float] = {}
    moved_to = restarted_on = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.time()
        hst = lab.cluster_state(prefer=survivors[0])
        if "detected" not in marks and hst and not hst.nodes[victim].online:
            marks["detected"] = now
        if "host_fenced" not in marks:
            for e in lab.power_events()[events_before:]:
                if e["host"] == victim and e["origin"] == "fence" and e["result"] == "ok":
                    marks["host_fenced"] = float(e["done"])
        if "guest_fenced" not in marks:
            for e in _audit(lab)[audit_before:]:
                if e.get("plug") == member and e.get("result") == "off":
                    marks["guest_fenced"] = now  # seen (the audit has 1 s resolution)
                    marks["guest_fence_ms"] = float(e.get("ms", 0.0))
        others = [n for n in gc.nodes if n != member]
        gst = gc.state(prefer=others[0])
        if gst is not None:
            node = gst.nodes.get(member)
            if "member_lost" not in marks and node is not None and not node.online:
                marks["member_lost"] = now
            holder = gc.service_node(gst)
            if "moved" not in marks and holder not in (None, member):
                marks["moved"] = now
                moved_to = holder
            if (
                "rejoined" not in marks
                and "guest_fenced" in marks
                and node is not None
                and node.online
            ):
                marks["rejoined"] = now
        if "restarted" not in marks and "host_fenced" in marks:
            where = running_on(lab.cfg, member)
            if where and where[0] != victim:
                marks["restarted"] = now
                restarted_on = where[0]
        if all(k in marks for k in ("host_fenced", "guest_fenced", "moved", "rejoined")):
            break
        time.sleep(0.5)
    else:
        raise KvmhaError(
            f"the guest cluster did not recover within {timeout:.0f} s (seen: {sorted(marks)})",
            "see 'kvmha lab status' and 'kvmha lab logs'",
        )
    rel = {k: round(v - t0, 1) for k, v in marks.items() if k != "guest_fence_ms"}
    return {
        "victim": victim,
        "member": member,
        "moved_to": moved_to,
        "restarted_on": restarted_on,
        "guest_fence_listener_ms": marks.get("guest_fence_ms"),
        **{f"{k}_s": v for k, v in rel.items()},
    }


def format_timeline(r: dict[str, Any]) -> str:
    rows = [
        (0.0, f"power cut: {r['victim']} (runs {r['member']}, serving HTTP)"),
        (r.get("detected_s"), f"host cluster: {r['victim']} offline"),
        (r.get("host_fenced_s"), f"host cluster: {r['victim']} fenced (lab power switch)"),
        (r.get("member_lost_s"), f"guest cluster: {r['member']} lost"),
        (
            r.get("guest_fenced_s"),
            f"guest cluster: {r['member']} fenced through kvmha "
            f"(listener answered 'off' after the host fence, {r['guest_fence_listener_ms']} ms)",
        ),
        (r.get("moved_s"), f"guest cluster: nginx + 10.77.0.99 started on {r['moved_to']}"),
        (r.get("restarted_s"), f"host cluster: {r['member']} started on {r['restarted_on']}"),
        (r.get("rejoined_s"), f"guest cluster: {r['member']} rejoined"),
    ]
    timed = sorted((float(t), text) for t, text in rows if t is not None)
    return "\n".join(f"  {t:6.1f} s  {text}" for t, text in timed)


def run_demo(lab: Lab, hosts: int, guests: int, agent: str, json_file: Path | None) -> None:
    """Like demo.run_demo; the guest cluster has 3 members, run by ocf:kvmha:Guest."""
    del guests, agent
    t_up = time.monotonic()
    lab.up(hosts, 3, "Guest", guest_image="debian", guest_cluster=True)
    up_s = time.monotonic() - t_up
    print(
        f"\nkvmha demo: {hosts} hosts, a guest cluster of 3 real Debian guests serving HTTP "
        f"(lab up in {up_s:.0f} s)"
    )
    result = measure(lab, RealGuestCluster(lab))
    result["lab_up_s"] = round(up_s, 1)
    print(format_timeline(result))
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nThe lab stays up: 'kvmha lab status', 'kvmha lab power-on {result['victim']}'. "
        "Take it down with 'kvmha lab down'."
    )
