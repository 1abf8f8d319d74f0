#!/usr/bin/python3
"""Benchmark: how the plan's cost grows with the cluster. Generated CIBs with kvmha's
constraints (capacity and utilization, priority tiers and their orderings, --after
chains, anti-affinity pairs, data-centre rules) for 8, 16 and 32 hosts x 10, 25 and 50
guests per host, settled by crm_simulate (no probe history, see below); then, per size:
host failure (one crm_simulate --node-fail run, median of --runs) and the time of
``kvmha plan --tolerate 1`` (kvmha.plan.make_plan on the same CIB: every host failing
alone, on all cores). No daemons: Pacemaker's scheduler only.

    bench/scale.py [--runs 3] [--hosts 8,16,32] [--per-host 10,25,50]
                   [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.unit.plan_cib import ENV, GuestSpec, build, settle


def generated(hosts: int, per_host: int) -> str:
    names = [f"host{i + 1}" for i in range(hosts)]
    caps = {h: (64, 262144) for h in names}
    dcs = {h: ("dev" if i % 4 == 0 else "prod") for i, h in enumerate(names)}
    guests = []
    for i in range(hosts * per_host):
        guests.append(
            GuestSpec(
                f"vm{i}",
                memory=1024 + 512 * (i % 7),
                cpu=1 + i % 4,
                priority=("high", "medium", "low")[i % 3],
                dc="dev" if i % 4 == 0 else "prod",
                prefers=names[i % hosts],
            )
        )
    apart = tuple((f"vm{i}", f"vm{i + 1}", "-INFINITY") for i in range(0, len(guests) - 1, 10))
    cib = build(caps, guests, apart=apart, host_dc=dcs, dcs=("dev", "prod"))
    # --after chains: every 20th guest starts after the one before it
    import xml.etree.ElementTree as ET

    from kvmha import placement

    root = ET.fromstring(cib)
    # No probe history: a real cluster of this size holds one probe result per guest per
    # host in its status (hosts x guests operations); simulating them all here would
    # take hours. The figures are therefore a lower bound (see docs/scale.md).
    placement.apply_copy(root, [placement.SetProperty("enable-startup-probes", "false")])
    for i in range(1, len(guests), 20):
        placement.apply_copy(root, placement.after_changes(root, f"vm{i}", f"vm{i - 1}"))
    return settle(ET.tostring(root, encoding="unicode"), names)


def time_crm_simulate(cib: str, host: str, runs: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d, "cib.xml")
        p.write_text(cib)
        took = []
        for _ in range(runs):
            t0 = time.monotonic()
            subprocess.run(
                ["crm_simulate", "-x", str(p), "-S", "-Q", "-q", "1", "--node-fail", host],
                capture_output=True,
                check=True,
                env=ENV,
                timeout=3600,
            )
            took.append(time.monotonic() - t0)
    return statistics.median(took)


def main() -> None:
    from kvmha import plan

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--hosts", default="8,16,32")
    ap.add_argument("--per-host", default="10,25,50")
    ap.add_argument("--json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for hosts in [int(x) for x in args.hosts.split(",")]:
        for per in [int(x) for x in args.per_host.split(",")]:
            t0 = time.monotonic()
            cib = generated(hosts, per)
            gen = time.monotonic() - t0
            sim = time_crm_simulate(cib, "host2", args.runs)
            t0 = time.monotonic()
            p = plan.make_plan(cib, tolerate=1)
            tol = time.monotonic() - t0
            row = {
                "hosts": hosts,
                "guests": hosts * per,
                "per_host": per,
                "cib_kib": len(cib) // 1024,
                "settle_s": round(gen, 2),
                "crm_simulate_node_fail_s": round(sim, 3),
                "plan_tolerate_1_s": round(tol, 2),
                "scenarios": len(p.scenarios),
                "ok": p.ok,
            }
            rows.append(row)
            print(
                f"{hosts:3} hosts x {per:3} = {hosts * per:5} guests  CIB {row['cib_kib']:6} KiB"
                f"  crm_simulate {sim:7.3f} s  plan --tolerate 1 {tol:7.2f} s"
                f"  ({len(p.scenarios)} scenarios, ok={p.ok})",
                flush=True,
            )
    out = {"schema": 1, "cores": os.cpu_count(), "runs": args.runs, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for hosts in sorted({r["hosts"] for r in rows}):
            rs = [r for r in rows if r["hosts"] == hosts]
            g = [r["guests"] for r in rs]
            axes[0].plot(
                g, [r["crm_simulate_node_fail_s"] for r in rs], "o-", label=f"{hosts} hosts"
            )
            axes[1].plot(g, [r["plan_tolerate_1_s"] for r in rs], "o-", label=f"{hosts} hosts")
        axes[0].set_title("crm_simulate, one host failing")
        axes[1].set_title("kvmha plan --tolerate 1 (every host)")
        for ax in axes:
            ax.set_xlabel("guests")
            ax.set_ylabel("seconds")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()
