"""Double-start guard: ask the other hosts' libvirt whether they run the guest.

Peers are ``peer_uris`` (``%n`` expands to every other cluster node), or by default every
other node of ``crm_node -l`` through the migration remote URI (remoteuri, or hypervisor
with migration_transport / migration_user / migration_network_suffix).  All peers are
asked in parallel, read-only, within one time budget; a peer that cannot be reached in
time is skipped with a warning (a powered-off or fenced host runs nothing; a host that
runs the guest but cannot be reached is what fencing is for).  Without a cluster node list
and without peer_uris the guard is skipped with an info message.
"""

from __future__ import annotations

import _thread
import time

from kvmha.virt import connect, err_text, load_libvirt

from . import migration

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List

    from .guest_params import Params
    from .ocf import Env, Logger


def cluster_nodes(timeout: float) -> List[str] | None:
    """Names of the nodes that are members of the cluster now (kvmha.pcmk, crm_node -l),
    or None without a cluster. A lost node is left out: it is down or being fenced, runs
    nothing, and asking it would only wait for a timeout while the guest's failover
    waits too."""
    from kvmha import pcmk  # lazy: only start runs the guard

    try:
        return pcmk.member_names(timeout)
    except Exception:  # no cluster, crm_node missing or failing
        return None


def local_node(timeout: float) -> str:
    from kvmha import pcmk

    try:
        return pcmk.local_node_name(timeout)
    except Exception:
        return ""


def peer_uris(p: Params, env: Env, budget: float, log: Logger) -> List[str]:
    spec = p.s("peer_uris")
    if spec.lower() == "none":
        return []
    if spec and "%n" not in spec:
        return spec.split()
    nodes = cluster_nodes(min(budget, 3.0))
    if nodes is None:
        log.info(
            "double-start guard skipped: no cluster node list (crm_node -l failed) "
            "and no peer_uris"
        )
        return []
    me = env.meta("on_node") or local_node(min(budget, 3.0))
    others = [n for n in nodes if n != me]
    if spec:
        return [u.replace("%n", n) for n in others for u in spec.split()]
    return [migration.remote_uri(p, n) for n in others]


def running_on_peers(p: Params, env: Env, name: str, budget: float, log: Logger) -> List[str]:
    """URIs of peers whose libvirt reports ``name`` active."""
    t0 = time.monotonic()
    uris = peer_uris(p, env, budget, log)
    if not uris:
        return []
    libvirt = load_libvirt()
    results: Dict[str, str] = {}
    lock = _thread.allocate_lock()

    def ask(uri: str) -> None:
        try:
            # bounded by the guard's budget like the wait below: a black-holing peer
            # costs at most that (kvmha.virt.connect opens in a thread of its own)
            conn = connect(uri, max(end - time.monotonic(), 0.1), readonly=True)
            try:
                try:
                    dom = conn.lookupByName(name)
                    verdict = "running" if dom.isActive() else "stopped"
                except libvirt.libvirtError as e:
                    if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
                    verdict = "stopped"
            finally:
                conn.close()
        except Exception as e:
            verdict = f"unreachable: {err_text(e)}"
        with lock:
            results[uri] = verdict

    end = t0 + budget
    for uri in uris:
        _thread.start_new_thread(ask, (uri,))
    while time.monotonic() < end:
        with lock:
            if len(results) == len(uris):
                break
        time.sleep(0.02)
    with lock:
        snapshot = dict(results)
    running = [u for u, v in snapshot.items() if v == "running"]
    for uri in uris:
        verdict = snapshot.get(uri, f"no answer within {budget:g}s")
        if verdict.startswith(("unreachable", "no answer")):
            log.warning(f"double-start guard: peer {uri} not checked ({verdict})")
    return running
