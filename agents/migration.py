"""Live migration: the target's libvirt URI and the migration data URI, built the way
ocf:heartbeat:VirtualDomain builds them, the libvirt flags and typed parameters for
virDomainMigrateToURI3, and migrate_to itself (peer-to-peer, progress logging, a bounded
wait)."""

from __future__ import annotations

import _thread
import contextlib
import time

from kvmha.virt import err_text

from . import ocf
from .guest_params import MIGRATE_FLAG_OPTIONS, Params
from .ocf import AgentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Tuple

    from kvmha.virt import Connection

    from .ocf import Logger

VIR_MIGRATE_LIVE = 1
VIR_MIGRATE_PEER2PEER = 2


def _with_suffix(node: str, suffix: str) -> str:
    """Insert the suffix before the first dot (an FQDN keeps its domain)."""
    if not suffix:
        return node
    head, dot, tail = node.partition(".")
    return head + suffix + dot + tail


def remote_uri(p: Params, node: str) -> str:
    """libvirt URI of ``node``'s hypervisor: remoteuri with %n, or the hypervisor URI with
    +transport, user@ and the node (plus migration_network_suffix) as host."""
    if p.s("remoteuri"):
        return p.s("remoteuri").replace("%n", node)
    hv = p.s("hypervisor")
    scheme, _sep, rest = hv.partition("://")
    host_port, slash, path = rest.partition("/")
    port = ""
    if ":" in host_port and not host_port.endswith("]"):
        port = ":" + host_port.rsplit(":", 1)[1]
    transport = p.s("migration_transport")
    if transport and "+" not in scheme:
        scheme = f"{scheme}+{transport}"
    elif transport:
        scheme = f"{scheme.split('+', 1)[0]}+{transport}"
    host = _with_suffix(node, p.s("migration_network_suffix"))
    user = p.s("migration_user")
    if user:
        host = f"{user}@{host}"
    return f"{scheme}://{host}{port}{slash}{path}"


def _percent_n(p: Params, node: str) -> str:
    """What %n in migrateuri (or --migrateuri=) stands for, as in VirtualDomain: the
    node, and unless remoteuri is set, with migration_network_suffix and migration_user@
    (VirtualDomain expands it after rewriting the node for the remote URI; libvirt reads
    the user part of a tcp:// migration URI and ignores it)."""
    if p.s("remoteuri"):
        return node
    target = _with_suffix(node, p.s("migration_network_suffix"))
    user = p.s("migration_user")
    return f"{user}@{target}" if user else target


def migrate_uri(p: Params, node: str) -> str:
    """The migration data URI: migrateuri, --migrateuri= in migrate_options, or
    tcp://<node><suffix>[:migrateport] when migration_network_suffix is set; else ''."""
    if p.s("migrateuri"):
        return p.s("migrateuri").replace("%n", _percent_n(p, node))
    for opt in p.s("migrate_options").split():
        if opt.startswith("--migrateuri="):
            return opt.split("=", 1)[1].replace("%n", _percent_n(p, node))
    suffix = p.s("migration_network_suffix")
    if suffix and p.s("hypervisor").startswith("qemu"):
        port = p.i("migrateport")
        return f"tcp://{_with_suffix(node, suffix)}" + (f":{port}" if port else "")
    return ""


def flags_and_params(p: Params, node: str, libvirt: Any) -> Tuple[int, Dict[str, Any]]:
    """Flags (always LIVE|PEER2PEER: the source libvirtd connects to the target, so this
    agent keeps its single connection) and typed parameters for migrateToURI3."""
    flags = VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER
    params: Dict[str, Any] = {}
    for opt in p.s("migrate_options").split():
        key, _eq, value = opt.partition("=")
        if key in MIGRATE_FLAG_OPTIONS:
            flags |= MIGRATE_FLAG_OPTIONS[key]
        elif key == "--listen-address":
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = value
        elif key == "--parallel-connections":
            params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = int(value)
    if flags & MIGRATE_FLAG_OPTIONS["--offline"]:
        flags &= ~VIR_MIGRATE_LIVE
    uri = migrate_uri(p, node)
    if uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = uri
    if p.i("migration_speed") > 0:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = p.i("migration_speed")
    return flags, params


PROGRESS_FIRST = 2.0  # first progress line after this many seconds
PROGRESS_EVERY = 5.0  # then this often
UNREACHABLE_HINTS = (
    "unable to connect",
    "Connection refused",
    "No route to host",
    "Name or service not known",
    "Temporary failure in name resolution",
    "Could not resolve",
    "Connection timed out",
    "Network is unreachable",
    "Cannot recv data",
    "Unable to resolve address",
)


def _progress(stats: Dict[str, Any]) -> str:
    total = int(stats.get("data_total", 0) or 0)
    done = int(stats.get("data_processed", 0) or 0)
    left = int(stats.get("data_remaining", 0) or 0)
    elapsed = int(stats.get("time_elapsed", 0) or 0) / 1000.0
    if not total:
        return f"setting up (no data moved yet), elapsed {elapsed:.1f}s"
    pct = f"{100.0 * done / total:.0f}%"
    mib = 1024 * 1024
    return (
        f"{pct} ({done // mib}/{total // mib} MiB, {left // mib} MiB left), "
        f"elapsed {elapsed:.1f}s"
    )


def postcopy_switch(p: Params) -> Tuple[bool, float | None]:
    """(after the first pre-copy pass, after this many seconds): when migrate_to calls
    virDomainMigrateStartPostCopy; (False, None) when it never does (then --postcopy only
    allows an admin to switch)."""
    after_pass = False
    after_s: float | None = None
    for opt in p.s("migrate_options").split():
        key, _eq, value = opt.partition("=")
        if key == "--postcopy-after-precopy":
            after_pass = True
        elif key == "--postcopy-after" and value.isdigit():
            after_s = float(value)
    return after_pass, after_s


def start_postcopy(
    dom: Any, name: str, lv: Any, log: Logger, after_pass: bool, after_s: float | None, t: float
) -> bool:
    """Switch a running migration to post-copy once its condition holds; True once done
    (or once it can no longer be done)."""
    due = after_s is not None and t >= after_s
    if not due and after_pass:
        try:
            stats = dom.jobStats()
        except lv.libvirtError:
            return False
        due = int(stats.get("memory_iteration", 0) or 0) >= 2  # the first pass is done
    if not due:
        return False
    try:
        dom.migrateStartPostCopy(0)
        log.info(f"{name}: migration switched to post-copy after {t:.1f}s")
    except lv.libvirtError as e:
        log.warning(f"{name}: could not switch the migration to post-copy: {err_text(e)}")
    return True


def migrate_to(conn: Connection, dom: Any, name: str, target: str, p: Params, log: Logger) -> int:
    """Live-migrate ``dom`` to ``target`` within the watchdog's deadline (conn.wd), logging
    progress, aborting the job when time runs out.  Gets only what it needs: the run's
    connection, the domain, the parameters and the logger."""
    lv = conn.lv
    wd = conn.wd
    if wd is None:
        raise AgentError(ocf.ERR_GENERIC, "migrate_to needs a deadline (no watchdog)")
    dconnuri = remote_uri(p, target)
    flags, params = flags_and_params(p, target, lv)
    if p.i("migration_downtime") > 0:
        try:
            conn.call(
                "setting the migration downtime",
                dom.migrateSetMaxDowntime,
                p.i("migration_downtime"),
                0,
            )
        except lv.libvirtError as e:
            log.warning(f"could not set migration downtime for {name}: {err_text(e)}")
    uri = params.get(lv.VIR_MIGRATE_PARAM_URI, "")
    log.info(
        f"{name}: starting live migration to {target} (libvirt {dconnuri}"
        f"{f', data {uri}' if uri else ''}, flags {flags:#x})"
    )
    # The migration call blocks for its whole duration: run it in a second thread so that
    # this one can log progress and abort the job before the operation deadline.
    result: List[Any] = []
    done = _thread.allocate_lock()
    done.acquire()

    def worker() -> None:
        try:
            dom.migrateToURI3(dconnuri, params, flags)
            result.append(None)
        except BaseException as e:
            result.append(e)
        finally:
            done.release()

    t0 = time.monotonic()
    wd.step = f"migrating {name} to {target}"
    _thread.start_new_thread(worker, ())
    next_log = t0 + PROGRESS_FIRST
    aborted = False
    after_pass, after_s = (
        postcopy_switch(p)
        if flags & MIGRATE_FLAG_OPTIONS["--postcopy"]
        else (
            False,
            None,
        )
    )
    switched = not (after_pass or after_s is not None)
    while not done.acquire(timeout=0.1):
        now = time.monotonic()
        if not switched and not aborted:
            switched = start_postcopy(dom, name, lv, log, after_pass, after_s, now - t0)
        if not aborted and wd.remaining() < 3.0:
            log.warning(f"{name}: migration to {target} is running out of time; aborting")
            try:
                dom.abortJob()
            except lv.libvirtError as e:
                log.warning(f"abortJob: {err_text(e)}")
            aborted = True
        if now >= next_log:
            with contextlib.suppress(lv.libvirtError):
                log.info(f"{name}: migration to {target}: {_progress(dom.jobStats())}")
            next_log = now + PROGRESS_EVERY
    err = result[0] if result else RuntimeError("migration thread vanished")
    took = time.monotonic() - t0
    if err is None:
        log.info(f"{name}: live migration to {target} succeeded in {took:.2f}s")
        return ocf.SUCCESS
    msg = err_text(err)
    if aborted:
        raise AgentError(
            ocf.ERR_GENERIC,
            f"live migration of {name} to {target} did not "
            f"finish within the operation timeout and was aborted ({msg})",
        )
    if any(h.lower() in msg.lower() for h in UNREACHABLE_HINTS):
        raise AgentError(
            ocf.ERR_GENERIC, f"cannot reach migration target {target} " f"({dconnuri}): {msg}"
        )
    raise AgentError(ocf.ERR_GENERIC, f"live migration of {name} to {target} failed: {msg}")
