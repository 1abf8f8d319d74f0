"""Wall time of ``kvmha net check`` on a namespace with 100 (or --links N) links.

  /usr/bin/python3 bench/net_check.py [--links 100] [--rounds 10]

Builds 10 bridges, each with veth ports (both ends in the namespace), in netns
kn-b<PID>, times check() in-process (read + rules + report) and the whole CLI
(``python3 -c`` with the net group, so interpreter start and imports count), then removes
the namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from kvmha.netcfg import nsutil
from kvmha.netcfg.check import check

CLI = (
    "import sys, click; from kvmha.tools.net_cli import net; "
    "sys.argv = ['kvmha-net'] + sys.argv[1:]; net()"
)


def build_links(ns: str, n: int) -> None:
    """n links (plus lo): bridges with veth pairs; a fifth of the ports' peers are down."""
    nsutil.remove(ns)
    nsutil.create(ns)
    r = nsutil.iproute(ns)
    try:
        made, b = 0, 0
        while made < n:
            br = f"br{b}"
            r.link("add", ifname=br, kind="bridge")
            bidx = r.link_lookup(ifname=br)[0]
            r.link("set", index=bidx, state="up")
            made += 1
            for p in range(4):
                if made + 2 > n:
                    break
                a = f"b{b}p{p}"
                r.link("add", ifname=a, kind="veth", peer={"ifname": a + "x"})
                r.link("set", index=r.link_lookup(ifname=a)[0], master=bidx, state="up")
                if p != 3:
                    r.link("set", index=r.link_lookup(ifname=a + "x")[0], state="up")
                made += 2
            b += 1
            if made + 1 >= n and made < n:
                r.link("add", ifname=f"br{b}", kind="bridge")
                made += 1
    finally:
        r.close()


def measure(ns: str, rounds: int = 10) -> dict[str, Any]:
    times, links = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        rep = check(ns)
        times.append(time.perf_counter() - t0)
        links = rep["links"]
    return {
        "links": links,
        "bridges": len(rep["bridges"]),
        "rounds": rounds,
        "median_s": round(statistics.median(times), 4),
        "max_s": round(max(times), 4),
    }


def measure_cli(ns: str, rounds: int = 5) -> dict[str, Any]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-c", CLI, "check", "--netns", ns, "--json"],
            capture_output=True, text=True, cwd="/", check=False,
        )  # fmt: skip
        times.append(time.perf_counter() - t0)
        if p.returncode not in (0, 1, 2):
            raise SystemExit(f"check failed: {p.stderr}")
    return {"cli_median_s": round(statistics.median(times), 4), "cli_max_s": round(max(times), 4)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--links", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    ns = f"kn-b{os.getpid()}"
    try:
        build_links(ns, a.links)
        out = measure(ns, a.rounds)
        out.update(measure_cli(ns, max(3, a.rounds // 2)))
    finally:
        nsutil.remove(ns)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
