#!/usr/bin/python3
"""Benchmark: from a host's power cut to its guests running on another host, for
ocf:kvmha:Guest and ocf:heartbeat:VirtualDomain side by side in the same lab.

Like for like: every run puts one guest of each agent on the SAME victim host, cuts that
host's power once, and times, from the cut, what both guests share -- detection (the
survivors see the host offline) and fencing (the lab power switch confirms it off) -- and
then each guest's own start: libvirt on its new host reports it running. Both guests see
the same failure, so the difference between them is the agents' own.

Runs alternate which agent's resource Pacemaker places first (resource ``priority``),
and the victim rotates over the hosts. Pacemaker's load throttle is lifted for the lab
(``load-threshold``, --throttle keeps the default): on a loaded 2-core machine it lets
one start wait for the other, which measures the throttle, not the agents. The report has
medians per agent, the ratio kvmha/VirtualDomain on the start part (fence confirmed ->
running) and on the total (cut -> running), both as a ratio of medians and as the median
of the per-run (paired) ratios, and the start ratio split by which agent went first.

    bench/failover.py [--runs 6] [--json FILE] [--labdir DIR] [--keep] [--throttle]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

AGENTS = {"kvmha": "guest1", "virtualdomain": "guest2"}
PARTS = ("total_s", "detect_s", "fence_s", "start_s")


def median(v: list[float]) -> float:
    return round(statistics.median(v), 3) if v else float("nan")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per agent and the kvmha/VirtualDomain ratios from the per-run records."""
    out: dict[str, Any] = {}
    for a in AGENTS:
        out[a] = {p: median([r[a][p] for r in runs]) for p in PARTS}
        out[a]["runs"] = len(runs)
    for p in ("start_s", "total_s"):
        key = p[:-2]
        out[f"ratio_{key}"] = round(out["kvmha"][p] / out["virtualdomain"][p], 3)
        out[f"ratio_{key}_paired"] = median([r["kvmha"][p] / r["virtualdomain"][p] for r in runs])
    for first in AGENTS:
        sel = [r for r in runs if r["first"] == first]
        out[f"ratio_start_when_{first}_first"] = median(
            [r["kvmha"]["start_s"] / r["virtualdomain"]["start_s"] for r in sel]
        )
    return out


def main() -> None:
    from kvmha.tools.lab import clusterconf, faults
    from kvmha.tools.lab.lab import Lab
    from kvmha.tools.lab.watch import Watcher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6, help="power cuts (each times both agents)")
    ap.add_argument("--json")
    ap.add_argument("--labdir", default="/var/lib/kvmha-bench-failover")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--throttle", action="store_true", help="keep Pacemaker's load throttle")
    args = ap.parse_args()

    lab = Lab(Path(args.labdir), lambda m: print(f"[lab] {m}", file=sys.stderr))
    started = not lab.is_configured()
    guests = list(AGENTS.values())
    try:
        lab.up(3, 2, "Guest")
        cfg = lab.cfg
        first_host = cfg.host_names()[0]
        # guest2 runs under VirtualDomain in the same cluster
        vd = clusterconf.guest_resource(dataclasses.replace(cfg, agent="VirtualDomain"), "guest2")
        lab.run_in(first_host, ["pcs", "resource", "delete", "guest2"], timeout=180)
        lab.run_in(
            first_host,
            ["cibadmin", "--create", "-o", "resources",
             "--xml-text", ET.tostring(vd, encoding="unicode")],
        )  # fmt: skip
        if not args.throttle:
            lab.run_in(
                first_host,
                ["crm_attribute", "--type", "crm_config",
                 "--name", "load-threshold", "--update", "10000%"],
            )  # fmt: skip
        runs: list[dict[str, Any]] = []
        for n in range(1, args.runs + 1):
            faults.restore(lab)
            victim = cfg.host_names()[n % cfg.hosts]
            first = list(AGENTS)[n % 2]  # alternate which agent Pacemaker places first
            for a, g in AGENTS.items():
                lab.run_in(
                    first_host,
                    ["crm_resource", "--resource", g, "--meta", "--set-parameter", "priority",
                     "--parameter-value", "10" if a == first else "0"],
                )  # fmt: skip
            for g in guests:
                if faults.placement(lab).get(g) != victim:
                    lab.run_in(
                        victim,
                        ["crm_resource", "--move", "--resource", g, "--node", victim],
                        check=False,
                    )
            lab.run_in(victim, ["crm_resource", "--wait", "--timeout", "180"], timeout=190)
            for g in guests:
                lab.run_in(victim, ["crm_resource", "--clear", "--resource", g], check=False)
            lab.run_in(victim, ["crm_resource", "--wait", "--timeout", "60"], timeout=70)
            where = faults.placement(lab)
            if any(where.get(g) != victim for g in guests):
                raise SystemExit(f"run {n}: could not place both guests on {victim}: {where}")
            elsewhere = next(h for h in cfg.host_names() if h != victim)
            with Watcher(lab, interval=0.1) as w:
                if w.wait_running_once(guests, 120) is None:
                    raise SystemExit(f"run {n}: the guests are not running once: {w.current()}")
                events = len(lab.power_events())
                lab.power_cut(victim)
                cut = float(lab.power_events()[events]["t"])
                detected = fenced = None
                back: dict[str, float] = {}
                deadline = time.time() + 180
                while time.time() < deadline and (fenced is None or len(back) < len(guests)):
                    now = time.time()
                    if detected is None:
                        st = lab.cluster_state(prefer=elsewhere)
                        node = st.nodes.get(victim) if st else None
                        if node is not None and not node.online:
                            detected = now
                    if fenced is None:
                        for e in lab.power_events()[events:]:
                            if e["host"] == victim and e["origin"] == "fence":
                                fenced = float(e["done"])
                    seen = w.current()
                    for g in guests:
                        on = seen.get(g)
                        if g not in back and on and on[0] != victim:
                            back[g] = time.time()
                    time.sleep(0.05)
            if fenced is None or detected is None or len(back) < len(guests):
                raise SystemExit(f"run {n}: failover did not complete (back: {back})")
            rec: dict[str, Any] = {"run": n, "victim": victim, "first": first}
            for a, g in AGENTS.items():
                rec[a] = {
                    "total_s": back[g] - cut,
                    "detect_s": detected - cut,
                    "fence_s": fenced - cut,
                    "start_s": back[g] - fenced,
                }
            runs.append(rec)
            print(
                f"run {n}/{args.runs} ({victim}, {first} first): detected {detected - cut:.2f} s, "
                f"fenced {fenced - cut:.2f} s, kvmha running {back['guest1'] - cut:.2f} s, "
                f"VirtualDomain running {back['guest2'] - cut:.2f} s",
                file=sys.stderr,
            )
        result = summarize(runs)
        result["token_ms"] = cfg.token_ms
        result["throttle"] = args.throttle
        result["per_run"] = runs
        print(json.dumps({k: v for k, v in result.items() if k != "per_run"}, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if started and not args.keep:
            lab.down()


if __name__ == "__main__":
    main()
