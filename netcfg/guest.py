"""Inside the kernel booted by ``kvmha net probe --kernel``: ``python3 -m kvmha.netcfg.guest``.

Loads the modules from $KVMHA_NET_MODULES, runs the probe, prints progress lines with
the ``kvmha-net:`` mark on the console and writes the report (or the error) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from kvmha.errors import KvmhaError
from kvmha.netcfg import probe
from kvmha.netcfg.vm import MARK


def say(msg: str) -> None:
    for line in msg.splitlines():
        print(f"{MARK} {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kvmha.netcfg.guest")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--modes", required=True)
    p.add_argument("--switch", default="designed")
    p.add_argument("--soak", type=float, default=11.0)
    p.add_argument("--no-failover", action="store_true")
    p.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    moddir = os.environ.get("KVMHA_NET_MODULES")
    out: dict[str, Any]
    rc = 0
    try:
        out = probe.run(
            probe.parse_modes(a.modes),
            probe.parse_switch(a.switch),
            soak=a.soak,
            failover=not a.no_failover,
            progress=say,
            moddir=Path(moddir) if moddir else None,
        )
    except KvmhaError as exc:
        out, rc = {"error": str(exc)}, exc.exit_code
    Path(a.out).write_text(json.dumps(out, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())
