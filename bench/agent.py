#!/usr/bin/python3
"""Benchmark: ocf:kvmha:Guest against ocf:heartbeat:VirtualDomain, side by side.

Times start, monitor (depth 0) and stop of both agents on the same domain, alternating,
in one run, inside a lab host (so their utilization updates hit a real cluster). Wall
and CPU seconds are those of the agent's process and every child it waited for. Two
configurations: both agents with their default parameters ("defaults"), and both with
utilization autoset off ("lean"). Stop is graceful: the guest has booted (acpid
listens) and powers off promptly, so stop measures request to confirmed off. "stop
(paused)" stops a guest that was paused first (virDomainSuspend): an agent that waits for
a graceful shutdown a paused guest cannot perform pays its whole window.

Runs in a 3-host lab by default (so Guest's double-start guard really asks two peers at
start), with one untimed warm-up cycle per agent and the agents' order alternating from
round to round.

    bench/agent.py [--rounds 5] [--monitors 10] [--hosts 3] [--json FILE] [--labdir DIR]
                   [--keep]

Brings up the lab in --labdir unless one is there, and takes it down afterwards unless
--keep. Prints a Markdown table; --json writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

AGENTS = {
    "kvmha": "/usr/lib/ocf/resource.d/kvmha/Guest",
    "vd": "/usr/lib/ocf/resource.d/heartbeat/VirtualDomain",
}
CONFIGS: dict[str, dict[str, dict[str, str]]] = {
    "defaults": {"kvmha": {}, "vd": {}},
    "lean": {
        "kvmha": {
            "autoset_utilization_cpu": "false",
            "autoset_utilization_hv_memory": "false",
            "autoset_utilization_host_memory": "false",
        },
        "vd": {
            "autoset_utilization_cpu": "false",
            "autoset_utilization_hv_memory": "false",
            "autoset_utilization_host_memory": "false",
        },
    },
}
RESOURCE = "benchvm"
DOMAIN = "guest9"


def timed(argv: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """(rc, wall s, CPU s of the process and the children it waited for)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode not in (0, 7):
        print(
            f"  {argv[-1]} of {argv[0]} gave rc {proc.returncode}: {err.strip()}", file=sys.stderr
        )
    return proc.returncode, wall, ru.ru_utime + ru.ru_stime


def agent_env(
    agent: str, config: str, params: dict[str, str], interval_ms: int = 0
) -> dict[str, str]:
    """What pacemaker-execd gives an OCF agent (ocf-rarun dispatches on the type)."""
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "OCF_ROOT": "/usr/lib/ocf",
        "OCF_RA_VERSION_MAJOR": "1",
        "OCF_RA_VERSION_MINOR": "1",
        "OCF_RESOURCE_INSTANCE": RESOURCE,
        "OCF_RESOURCE_TYPE": os.path.basename(AGENTS[agent]),
        "OCF_RESOURCE_PROVIDER": os.path.basename(os.path.dirname(AGENTS[agent])),
        "OCF_RESKEY_CRM_meta_timeout": "60000",
        "OCF_RESKEY_CRM_meta_interval": str(interval_ms),
        "OCF_RESKEY_CRM_meta_on_node": "host1",
        "OCF_EXIT_REASON_PREFIX": "ocf-exit-reason:",
        "OCF_RESKEY_config": config,
        "OCF_RESKEY_hypervisor": "qemu:///system",
    }
    env.update({f"OCF_RESKEY_{k}": v for k, v in params.items()})
    return env


def pause(name: str) -> None:
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        conn.lookupByName(name).suspend()
    finally:
        conn.close()


def wait_ready(serial: Path, offset: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(serial, "rb") as f:
            f.seek(offset)
            if b"KVMHA-GUEST-READY" in f.read():
                return
        time.sleep(0.1)
    raise SystemExit(f"{DOMAIN} did not become ready")


def inside(args: argparse.Namespace) -> dict[str, Any]:
    """Runs inside host1: the measurement itself."""
    config, serial = args.config, Path(args.serial)
    samples: dict[str, dict[str, dict[str, list[tuple[float, float]]]]] = {
        c: {a: {"start": [], "monitor": [], "stop": []} for a in AGENTS} for c in CONFIGS
    }
    for c in samples.values():
        for a in c.values():
            a["stop (paused)"] = []

    def cycle(cname: str, agent: str, record: bool) -> None:
        path, params = AGENTS[agent], CONFIGS[cname][agent]
        size = serial.stat().st_size if serial.exists() else 0
        rc, wall, cpu = timed([path, "start"], agent_env(agent, config, params))
        if rc != 0:
            raise SystemExit(f"start of {agent} failed")
        if record:
            samples[cname][agent]["start"].append((wall, cpu))
        wait_ready(serial, size)
        for _ in range(args.monitors if record else 1):
            env = agent_env(agent, config, params, 10000)
            rc, wall, cpu = timed([path, "monitor"], env)
            if rc != 0:
                raise SystemExit(f"monitor of {agent} gave {rc}")
            if record:
                samples[cname][agent]["monitor"].append((wall, cpu))
        rc, wall, cpu = timed([path, "stop"], agent_env(agent, config, params))
        if rc != 0:
            raise SystemExit(f"stop of {agent} failed")
        if record:
            samples[cname][agent]["stop"].append((wall, cpu))
            # the same guest, paused before the stop
            size = serial.stat().st_size if serial.exists() else 0
            if timed([path, "start"], agent_env(agent, config, params))[0] != 0:
                raise SystemExit(f"start of {agent} failed")
            wait_ready(serial, size)
            pause(DOMAIN)
            rc, wall, cpu = timed([path, "stop"], agent_env(agent, config, params))
            if rc != 0:
                raise SystemExit(f"stop of paused guest by {agent} failed")
            samples[cname][agent]["stop (paused)"].append((wall, cpu))

    for agent in AGENTS:  # warm-up: caches, page cache, libvirtd's first connections
        cycle("defaults", agent, record=False)
    for rnd in range(args.rounds):
        order = list(AGENTS) if rnd % 2 == 0 else list(reversed(AGENTS))
        for cname in CONFIGS:
            for agent in order:
                cycle(cname, agent, record=True)
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    result: dict[str, Any] = {}
    for cname in CONFIGS:
        result[cname] = {}
        for action in ("monitor", "start", "stop", "stop (paused)"):
            k = samples[cname]["kvmha"][action]
            v = samples[cname]["vd"][action]
            kw, kc = statistics.median(s[0] for s in k), statistics.median(s[1] for s in k)
            vw, vc = statistics.median(s[0] for s in v), statistics.median(s[1] for s in v)
            result[cname][action] = {
                "kvmha_wall_s": round(kw, 4),
                "vd_wall_s": round(vw, 4),
                "ratio_wall": round(kw / vw, 3),
                "kvmha_cpu_s": round(kc, 4),
                "vd_cpu_s": round(vc, 4),
                "ratio_cpu": round(kc / vc, 3) if vc else None,
                "n": len(k),
            }
    return result


def table(result: dict[str, Any]) -> str:
    rows = [
        "| config | action | kvmha wall ms | VD wall ms | ratio wall | kvmha CPU ms "
        "| VD CPU ms | ratio CPU | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cname, actions in result.items():
        for action, r in actions.items():
            rows.append(
                f"| {cname} | {action} | {r['kvmha_wall_s'] * 1000:.0f} | "
                f"{r['vd_wall_s'] * 1000:.0f} | {r['ratio_wall']:.2f} | "
                f"{r['kvmha_cpu_s'] * 1000:.0f} | {r['vd_cpu_s'] * 1000:.0f} | "
                f"{r['ratio_cpu']:.2f} | {r['n']} |"
            )
    return "\n".join(rows)


def outside(args: argparse.Namespace) -> None:
    from kvmha.tools.lab import libvirtconf
    from kvmha.tools.lab.lab import Lab

    lab = Lab(Path(args.labdir), lambda m: print(f"[lab] {m}", file=sys.stderr))
    started = not lab.is_configured()
    try:
        lab.up(args.hosts, 0)
        cfg = lab.cfg
        xml = libvirtconf.guest_domain_xml(
            cfg, DOMAIN, str(cfg.image_dir / "vmlinuz"), str(cfg.image_dir / "initrd.img")
        )
        config = cfg.guests_dir / f"{DOMAIN}.xml"
        config.write_text(xml)
        # a resource of that name in the CIB, so utilization updates go through for real
        lab.run_in(
            "host1",
            [
                "cibadmin",
                "--create",
                "-o",
                "resources",
                "--xml-text",
                f'<primitive id="{RESOURCE}" class="ocf" provider="pacemaker" '
                f'type="Dummy"><meta_attributes id="{RESOURCE}-meta">'
                f'<nvpair id="{RESOURCE}-managed" name="is-managed" value="false"/>'
                f'<nvpair id="{RESOURCE}-role" name="target-role" value="Stopped"/>'
                "</meta_attributes></primitive>",
            ],
            check=False,
        )
        r = lab.run_in(
            "host1",
            [
                "/usr/bin/python3",
                "-I",
                str(Path(__file__).resolve()),
                "--inside",
                "--config",
                str(config),
                "--serial",
                str(cfg.guests_dir / f"{DOMAIN}.serial.log"),
                "--rounds",
                str(args.rounds),
                "--monitors",
                str(args.monitors),
            ],
            timeout=3600,
            check=False,
        )
        sys.stderr.write(r.stderr)
        if r.returncode != 0:
            raise SystemExit(f"benchmark failed inside host1 (rc {r.returncode})")
        result = json.loads(r.stdout)
        print(table(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if started and not args.keep:
            lab.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--monitors", type=int, default=10)
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--labdir", default="/var/lib/kvmha-bench")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--serial", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        print(json.dumps(inside(args)))
    else:
        outside(args)


if __name__ == "__main__":
    main()
