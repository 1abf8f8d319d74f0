"""migrate_to: peer-to-peer live migration with progress logging and a bounded wait."""

from __future__ import annotations

import _thread
import contextlib
import time

from . import migration, ocf
from .ocf import AgentError
from .virt import err_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List

    from .guest import Guest

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


def migrate_to(g: Guest) -> int:
    target = g.env.meta("migrate_target")
    if not target:
        raise AgentError(
            ocf.ERR_CONFIGURED,
            "migrate_to needs OCF_RESKEY_CRM_meta_migrate_" "target (is allow-migrate set?)",
        )
    problem = g.config_problem()
    name = g.cached_name() if problem else g.domain_name()
    if name is None:
        raise AgentError(ocf.ERR_INSTALLED, f"{problem}")
    conn = g.connect()
    lv = conn.lv
    found = conn.lookup(name)
    if found is None or g.is_off(found):
        raise AgentError(ocf.ERR_GENERIC, f"migrate_to: {name} is not active here")
    dom: Any = found
    dconnuri = migration.remote_uri(g.p, target)
    flags, params = migration.flags_and_params(g.p, target, lv)
    if g.p.b("save_config_on_stop") and not problem:
        g.save_config(conn, dom, name)
    if g.p.i("migration_downtime") > 0:
        try:
            conn.call(
                "setting the migration downtime",
                dom.migrateSetMaxDowntime,
                g.p.i("migration_downtime"),
                0,
            )
        except lv.libvirtError as e:
            g.log.warning(f"could not set migration downtime for {name}: {err_text(e)}")
    uri = params.get(lv.VIR_MIGRATE_PARAM_URI, "")
    g.log.info(
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
    g.wd.step = f"migrating {name} to {target}"
    _thread.start_new_thread(worker, ())
    next_log = t0 + PROGRESS_FIRST
    aborted = False
    while not done.acquire(timeout=0.1):
        now = time.monotonic()
        if not aborted and g.remaining() < 3.0:
            g.log.warning(f"{name}: migration to {target} is running out of time; aborting")
            try:
                dom.abortJob()
            except lv.libvirtError as e:
                g.log.warning(f"abortJob: {err_text(e)}")
            aborted = True
        if now >= next_log:
            with contextlib.suppress(lv.libvirtError):
                g.log.info(f"{name}: migration to {target}: {_progress(dom.jobStats())}")
            next_log = now + PROGRESS_EVERY
    err = result[0] if result else RuntimeError("migration thread vanished")
    took = time.monotonic() - t0
    if err is None:
        g.log.info(f"{name}: live migration to {target} succeeded in {took:.2f}s")
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
