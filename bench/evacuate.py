#!/usr/bin/python3
"""Benchmark: evacuating a host with 4 guests (--parallel 1, 2, 4) and the failover of a
host with 3 guests, in one 3-host lab.

Evacuation: all 4 guests are put on host1, then ``kvmha host evacuate host1 --parallel N
--wait`` runs; total time from the command's start to its end, and each guest's
downtime as libvirt measured it (the completed migration job's ``downtime`` on the
destination, ``virDomainGetJobStats(VIR_DOMAIN_JOB_STATS_COMPLETED)``). ``kvmha host
return host1 --move-back`` puts them back for the next N.

Failover: 3 guests on host2 (then 1 guest, for comparison), power cut of host2, time from
the cut to the last of them printing its READY marker again (booted, guest agent and HTTP
up) on another host.

    bench/evacuate.py [--labdir DIR] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

GUESTS = ["guest1", "guest2", "guest3", "guest4"]


def main() -> None:
    from kvmha.tools.lab import faults
    from kvmha.tools.lab.lab import Lab

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--labdir", default="/var/lib/kvmha-bench-evacuate")
    ap.add_argument("--json")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--parallel", default="1,2,4")
    args = ap.parse_args()
    lab = Lab(Path(args.labdir), lambda m: print(f"[lab] {m}", file=sys.stderr))
    out: dict[str, Any] = {"schema": 1, "evacuate": [], "failover": []}
    try:
        lab.up(3, 4, "Guest")

        def kv(*a: str, timeout: float = 900) -> Any:
            r = lab.run_in("host3", ["kvmha", *a], timeout=timeout, check=False)
            if r.returncode != 0:
                raise SystemExit(f"kvmha {' '.join(a)} failed: {r.stderr}")
            return r

        def where() -> dict[str, str | None]:
            st = lab.cluster_state()
            assert st is not None
            return {g: st.running_on(g) for g in GUESTS}

        def layout(want: dict[str, str]) -> None:
            for g, h in want.items():
                if where()[g] != h:
                    kv("guest", "migrate", g, h)

        layout({g: "host1" for g in GUESTS})
        for n in [int(x) for x in args.parallel.split(",")]:
            t0 = time.monotonic()
            res = json.loads(
                kv(
                    "host", "evacuate", "host1", "--parallel", str(n), "--wait", "600", "--json"
                ).stdout
            )
            total = time.monotonic() - t0
            downtime = {m["guest"]: downtime_ms(lab, m["to"], m["guest"]) for m in res["moved"]}
            row = {
                "parallel": n,
                "total_s": round(total, 1),
                "moved": len(res["moved"]),
                "downtime_ms": downtime,
                "arrival_s": {m["guest"]: m["seconds"] for m in res["moved"]},
            }
            out["evacuate"].append(row)
            print(f"--parallel {n}: {total:.1f} s total, downtime ms {downtime}", flush=True)
            kv("host", "return", "host1", "--move-back")
        for guests_on_host in (3, 1):
            faults.restore(lab)
            others = {g: "host1" for g in GUESTS}
            others.update({g: "host2" for g in GUESTS[:guests_on_host]})
            layout(others)
            marks = {g: lab.serial_log_size(g) for g in GUESTS[:guests_on_host]}
            t0 = time.monotonic()
            lab.power_cut("host2")
            ready: dict[str, float] = {}
            while len(ready) < len(marks) and time.monotonic() - t0 < 400:
                for g, off in marks.items():
                    if g not in ready and lab.guest_ready_since(g, off):
                        ready[g] = round(time.monotonic() - t0, 1)
                time.sleep(0.2)
            row = {
                "guests": guests_on_host,
                "ready_s": ready,
                "last_ready_s": max(ready.values()) if len(ready) == len(marks) else None,
            }
            out["failover"].append(row)
            print(f"failover of a host with {guests_on_host} guest(s): {row}", flush=True)
            lab.power_on("host2")
        faults.restore(lab)
    finally:
        if not args.keep:
            lab.down()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def downtime_ms(lab: Any, host: str, guest: str) -> int | None:
    """The completed migration job's downtime, from libvirt on the destination."""
    import libvirt

    uri = f"qemu:///system?socket={lab.cfg.host_dir(host)}/run/libvirt/libvirt-sock"
    try:
        conn = libvirt.open(uri)
        try:
            st = conn.lookupByName(guest).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        finally:
            conn.close()
    except libvirt.libvirtError:
        return None
    d = st.get("downtime")
    return int(d) if d is not None else None


if __name__ == "__main__":
    main()
