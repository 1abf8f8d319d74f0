"""Faults the lab can inject into its host cluster, and the repairs after each.

Every fault returns when it has been injected; ``restore`` undoes what a fault left
behind (a host still off after its fence, a cable still unplugged, a move constraint) so
the next fault meets a whole cluster. Processes are found by PID, never by name.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable

from kvmha.errors import KvmhaError
from kvmha.tools.lab.lab import Lab


@dataclasses.dataclass
class Injected:
    kind: str
    host: str | None
    guest: str | None
    t: float  # time.time() of the injection


def daemon_pid(lab: Lab, host: str, name: str) -> str:
    """PID (inside the host) of one of the host's daemons, from the host init's record."""
    import json

    r = lab.run_in(host, ["cat", "/run/kvmha-lab-daemons.json"])
    pids = json.loads(r.stdout)
    if name not in pids:
        raise KvmhaError(f"{name} does not run on {host}")
    return str(pids[name])


def qemu_pid(lab: Lab, host: str, guest: str) -> str:
    return (lab.cfg.host_dir(host) / "run/libvirt/qemu" / f"{guest}.pid").read_text().strip()


def placement(lab: Lab) -> dict[str, str]:
    st = lab.cluster_state()
    if st is None:
        return {}
    return {g: h for g in lab.cfg.guest_names() if (h := st.running_on(g))}


def power_cut(lab: Lab, rng: random.Random) -> Injected:
    host = busiest_host(lab, rng)
    lab.power_cut(host)
    return Injected("power-cut", host, None, time.time())


def corosync_kill(lab: Lab, rng: random.Random) -> Injected:
    host = busiest_host(lab, rng)
    lab.run_in(host, ["kill", "-9", daemon_pid(lab, host, "corosync")])
    return Injected("corosync-kill", host, None, time.time())


def isolate(lab: Lab, rng: random.Random) -> Injected:
    host = busiest_host(lab, rng)
    lab.isolate(host)
    return Injected("isolate", host, None, time.time())


def qemu_kill(lab: Lab, rng: random.Random) -> Injected:
    where = placement(lab)
    guest = rng.choice(sorted(where))
    lab.run_in(where[guest], ["kill", "-9", qemu_pid(lab, where[guest], guest)])
    return Injected("qemu-kill", where[guest], guest, time.time())


def libvirtd_kill(lab: Lab, rng: random.Random) -> Injected:
    host = busiest_host(lab, rng)
    lab.run_in(host, ["kill", "-9", daemon_pid(lab, host, "libvirtd")])
    return Injected("libvirtd-kill", host, None, time.time())


def power_cut_during_migration(lab: Lab, rng: random.Random) -> Injected:
    """Two faults at once: a host loses power while a guest live-migrates away from it."""
    where = placement(lab)
    guest = rng.choice(sorted(where))
    source = where[guest]
    target = rng.choice([h for h in lab.cfg.host_names() if h != source and lab.powered(h)])
    lab.run_in(source, ["crm_resource", "--move", "--resource", guest, "--node", target])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # cut as soon as the migration is under way
        st = lab.cluster_state()
        r = st.resources.get(guest) if st else None
        if r is not None and (r.role == "Migrating" or len(r.nodes) > 1 or r.nodes == (target,)):
            break
        time.sleep(0.05)
    lab.power_cut(source)
    return Injected("migration-power-cut", source, guest, time.time())


FAULTS: dict[str, Callable[[Lab, random.Random], Injected]] = {
    "power-cut": power_cut,
    "corosync-kill": corosync_kill,
    "isolate": isolate,
    "qemu-kill": qemu_kill,
    "libvirtd-kill": libvirtd_kill,
    "migration-power-cut": power_cut_during_migration,
}


def busiest_host(lab: Lab, rng: random.Random) -> str:
    """A powered host that runs at least one guest (a fault there has something to prove)."""
    counts: dict[str, int] = {}
    for h in placement(lab).values():
        counts[h] = counts.get(h, 0) + 1
    hosts = sorted(h for h in counts if lab.powered(h))
    if not hosts:
        raise KvmhaError("no powered host runs a guest")
    return rng.choice(hosts)


def _online(lab: Lab, host: str) -> bool:
    st = lab.cluster_state()
    return bool(st and host in st.nodes and st.nodes[host].online)


def restore(lab: Lab, timeout: float = 240.0) -> None:
    """Bring the cluster back whole: cables in, hosts on and online, constraints cleared,
    fail counts cleaned, every guest started."""
    from kvmha.tools.lab import network

    cfg = lab.cfg
    deadline = time.monotonic() + timeout
    for host in cfg.host_names():
        if not network.cable_connected(cfg, host):
            lab.rejoin(host)
    # a host cut off from the others (no cable, no corosync) is fenced by them: wait for
    # that rather than power it on under their feet; power-cycle one that never is
    for host in cfg.host_names():
        while lab.powered(host) and not _online(lab, host):
            if time.monotonic() > deadline - timeout / 2:
                lab.power_cut(host)
                break
            time.sleep(0.5)
    for host in cfg.host_names():
        if not lab.powered(host):
            lab.power_on(host)
    while True:
        st = lab.cluster_state()
        if st and st.quorate and len(st.online_nodes()) == cfg.hosts:
            break
        if time.monotonic() > deadline:
            raise KvmhaError("the lab did not come back whole after a fault")
        time.sleep(0.5)
    first = cfg.host_names()[0]
    for g in cfg.guest_names():
        lab.run_in(first, ["crm_resource", "--clear", "--resource", g], check=False)
        # a guest a test stopped (target-role) is started again
        lab.run_in(
            first,
            ["crm_resource", "--resource", g, "--meta", "--delete-parameter", "target-role"],
            check=False,
        )
        lab.run_in(first, ["crm_resource", "--cleanup", "--resource", g], check=False)
    left = max(10, int(deadline - time.monotonic()))
    lab.run_in(
        first, ["crm_resource", "--wait", "--timeout", str(left)], timeout=left + 10, check=False
    )
