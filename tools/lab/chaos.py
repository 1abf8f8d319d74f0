"""`kvmha lab chaos`: random faults into the lab, the HA invariant checked from outside.

Every second every powered host's libvirt is asked which guests it runs (watch.Watcher):
a guest running on two hosts at once is a violation. After each fault, the guests it hit
must run again, each on exactly one host, within the bound; otherwise that is a violation
too. The recovery time of a fault is from its injection to the first sample that shows
its guests running again (elsewhere, for a host failure).
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvmha.errors import UsageError
from kvmha.tools.lab import faults
from kvmha.tools.lab.lab import Lab
from kvmha.tools.lab.watch import Watcher

HOST_FAULTS = {"power-cut", "corosync-kill", "isolate", "migration-power-cut"}


def recovered(
    kind: str,
    inj: faults.Injected,
    hit: list[str],
    where: dict[str, list[str]],
    gone: set[str],
    guests: list[str],
) -> bool:
    """Has the cluster undone this fault, as the latest watcher sample shows it?"""
    if not all(len(where.get(g, [])) == 1 for g in guests):
        return False
    if kind in HOST_FAULTS:
        return all(where[g][0] != inj.host for g in hit)
    if kind == "qemu-kill":
        return inj.guest in gone  # it was seen dead, and runs again
    return True  # libvirtd-kill: its guests never stopped; libvirt answers again


def inject_and_recover(
    lab: Lab, w: Watcher, kind: str, rng: random.Random, bound_s: float
) -> tuple[faults.Injected, list[str], float | None]:
    """Inject one fault; return it, the guests it hit, and the seconds until the cluster
    undid it (None: not within bound_s)."""
    guests = lab.cfg.guest_names()
    before = faults.placement(lab)
    inj = faults.FAULTS[kind](lab, rng)
    hit = sorted(g for g, h in before.items() if h == inj.host)
    if inj.guest and inj.guest not in hit:
        hit.append(inj.guest)
    gone: set[str] = set()
    seen = w.samples
    while time.time() - inj.t < bound_s:
        time.sleep(0.2)
        if w.samples == seen:
            continue
        seen = w.samples
        where = w.current()
        gone |= {g for g in guests if not where.get(g)}
        if recovered(kind, inj, hit, where, gone, guests):
            return inj, hit, time.time() - inj.t
    return inj, hit, None


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "p95": round(percentile(values, 0.95), 2),
        "max": round(max(values), 2),
    }


def soak(
    lab: Lab,
    rounds: int,
    seed: int,
    bound_s: float = 150.0,
    kinds: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    cfg = lab.cfg
    if cfg.hosts < 3 or cfg.guests < 4:
        raise UsageError(
            f"chaos needs at least 3 hosts and 4 guests (this lab: {cfg.hosts} "
            f"hosts, {cfg.guests} guests)",
            "kvmha lab down; kvmha lab up --hosts 3 --guests 4",
        )
    kinds = sorted(kinds or faults.FAULTS)
    unknown = set(kinds) - set(faults.FAULTS)
    if unknown:
        raise UsageError(
            f"unknown fault {sorted(unknown)[0]!r}", f"faults: {', '.join(faults.FAULTS)}"
        )
    rng = random.Random(seed)  # noqa: S311 (a reproducible fault schedule, no secret)
    guests = cfg.guest_names()
    counts = {k: 0 for k in kinds}
    recovery: dict[str, list[float]] = {k: [] for k in kinds}
    violations: list[dict[str, Any]] = []
    log: list[dict[str, Any]] = []
    faults.restore(lab)
    with Watcher(lab) as w:
        if w.wait_running_once(guests, bound_s) is None:
            raise UsageError("the lab's guests do not all run", "see 'kvmha lab status'")
        for rnd in range(1, rounds + 1):
            kind = rng.choice(kinds)
            inj, hit, took = inject_and_recover(lab, w, kind, rng, bound_s)
            counts[kind] += 1
            entry = {
                "round": rnd,
                "fault": kind,
                "host": inj.host,
                "guest": inj.guest,
                "hit": hit,
                "recovery_s": None if took is None else round(took, 2),
            }
            log.append(entry)
            if took is None:
                violations.append(
                    {
                        "t": time.time(),
                        "kind": "not-recovered",
                        "round": rnd,
                        "fault": kind,
                        "guests": hit,
                        "bound_s": bound_s,
                    }
                )
                say(
                    f"round {rnd}/{rounds}: {kind} on {inj.host}: NOT recovered in "
                    f"{bound_s:.0f} s"
                )
            else:
                recovery[kind].append(took)
                say(
                    f"round {rnd}/{rounds}: {kind} on {inj.host}"
                    f"{' (' + inj.guest + ')' if inj.guest else ''}: recovered in {took:.1f} s"
                )
            faults.restore(lab)
        violations = w.violations + violations
    return {
        "rounds": rounds,
        "seed": seed,
        "bound_s": bound_s,
        "lab": {
            "hosts": cfg.hosts,
            "guests": cfg.guests,
            "agent": cfg.agent,
            "token_ms": cfg.token_ms,
        },
        "faults": counts,
        "violations": violations,
        "recovery_s": {k: summary(v) for k, v in recovery.items() if v},
        "watch_samples": w.samples,
        "log": log,
    }


def plot(result: dict[str, Any], png: Path) -> None:
    """Recovery time per fault kind: every round as a dot, the median as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({e["fault"] for e in result["log"]})
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    for i, kind in enumerate(kinds):
        ys = [
            e["recovery_s"]
            for e in result["log"]
            if e["fault"] == kind and e["recovery_s"] is not None
        ]
        if not ys:
            continue
        rng = random.Random(i)  # noqa: S311 (jitter of dots in a plot)
        ax.scatter([i + rng.uniform(-0.15, 0.15) for _ in ys], ys, s=14, alpha=0.7)
        ax.hlines(statistics.median(ys), i - 0.3, i + 0.3, colors="black", linewidth=2)
    ax.set_xticks(range(len(kinds)))
    ax.set_xticklabels(kinds, rotation=15)
    ax.set_ylabel("recovery time (s)")
    lab = result["lab"]
    ax.set_title(
        f"kvmha lab chaos: {result['rounds']} rounds, seed {result['seed']}, "
        f"{lab['hosts']} hosts, {lab['guests']} guests, "
        f"{len(result['violations'])} violations"
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def write(result: dict[str, Any], json_file: Path | None, png: Path | None) -> None:
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2) + "\n")
    if png is not None:
        plot(result, png)
