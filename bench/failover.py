#!/usr/bin/python3
"""Benchmark: from a host's power cut to its guest running on another host, for
ocf:kvmha:Guest and ocf:heartbeat:VirtualDomain in the same lab.

Each run puts one guest of each agent on the same host, cuts that host's power, and times
from the cut: detection (the survivors see the host offline), fencing (the lab power
switch confirms it off), and each guest running again elsewhere (libvirt on the new host
reports it running). Both guests see the same failure, so their difference is the
agents' own. Medians over --runs; the ratio is kvmha/VirtualDomain on the total.

    bench/failover.py [--runs 5] [--json FILE] [--labdir DIR] [--keep]
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


def main() -> None:
    from kvmha.tools.lab import clusterconf, faults
    from kvmha.tools.lab.lab import Lab
    from kvmha.tools.lab.watch import Watcher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--labdir", default="/var/lib/kvmha-bench-failover")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    lab = Lab(Path(args.labdir), lambda m: print(f"[lab] {m}", file=sys.stderr))
    started = not lab.is_configured()
    agents = {"kvmha": "guest1", "virtualdomain": "guest2"}
    try:
        lab.up(3, 2, "Guest")
        cfg = lab.cfg
        # guest2 runs under VirtualDomain in the same cluster
        vd = clusterconf.guest_resource(dataclasses.replace(cfg, agent="VirtualDomain"), "guest2")
        first = cfg.host_names()[0]
        lab.run_in(first, ["pcs", "resource", "delete", "guest2"], timeout=180)
        lab.run_in(
            first,
            [
                "cibadmin",
                "--create",
                "-o",
                "resources",
                "--xml-text",
                ET.tostring(vd, encoding="unicode"),
            ],
        )
        runs: dict[str, dict[str, list[float]]] = {
            a: {"total_s": [], "detect_s": [], "fence_s": [], "start_s": []} for a in agents
        }
        order = [a for _ in range(args.runs) for a in agents]
        for n, agent in enumerate(order, 1):
            faults.restore(lab)
            victim = cfg.host_names()[n % cfg.hosts]
            elsewhere = cfg.host_names()[(n + 1) % cfg.hosts]
            guest = agents[agent]
            want = {g: (victim if g == guest else elsewhere) for g in agents.values()}
            where = faults.placement(lab)
            for g, h in want.items():
                if where.get(g) != h:
                    lab.run_in(
                        h, ["crm_resource", "--move", "--resource", g, "--node", h], check=False
                    )
            lab.run_in(victim, ["crm_resource", "--wait", "--timeout", "180"], timeout=190)
            for g in agents.values():
                lab.run_in(victim, ["crm_resource", "--clear", "--resource", g], check=False)
            lab.run_in(victim, ["crm_resource", "--wait", "--timeout", "60"], timeout=70)
            if faults.placement(lab) != want:
                raise SystemExit(f"run {n}: could not place the guests: {faults.placement(lab)}")
            with Watcher(lab, interval=0.1) as w:
                w.wait_running_once(list(agents.values()), 120)
                events = len(lab.power_events())
                lab.power_cut(victim)
                cut = float(lab.power_events()[events]["t"])
                detected = fenced = back = None
                deadline = time.time() + 180
                while time.time() < deadline and (fenced is None or back is None):
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
                    on = w.current().get(guest)
                    if back is None and on and on[0] != victim:
                        back = time.time()
                    time.sleep(0.05)
            if fenced is None or detected is None or back is None:
                raise SystemExit(f"run {n}: failover did not complete")
            runs[agent]["total_s"].append(back - cut)
            runs[agent]["detect_s"].append(detected - cut)
            runs[agent]["fence_s"].append(fenced - cut)
            runs[agent]["start_s"].append(back - fenced)
            print(
                f"run {n}/{len(order)} {agent} ({victim}): detected {detected - cut:.1f} s, "
                f"fenced {fenced - cut:.1f} s, running again {back - cut:.1f} s",
                file=sys.stderr,
            )
        result: dict[str, Any] = {}
        for a, r in runs.items():
            result[a] = {k: round(statistics.median(v), 2) for k, v in r.items()}
            result[a]["runs"] = len(r["total_s"])
        result["ratio_total"] = round(
            result["kvmha"]["total_s"] / result["virtualdomain"]["total_s"], 3
        )
        result["token_ms"] = cfg.token_ms
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if started and not args.keep:
            lab.down()


if __name__ == "__main__":
    main()
