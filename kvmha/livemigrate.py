"""Live migration of a guest resource to a named host, with progress from libvirt.

Owns ``kvmha guest migrate``: the checks before the move (data centre, allow-migrate,
host online), the move through the cluster (crm_resource --move, always cleared after),
and the progress that libvirt reports for the migration job on the source host.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Optional

from kvmha import datacentre, pcmk, virt
from kvmha.errors import KvmhaError, UsageError
from kvmha.guests import require_guest, require_host
from kvmha.process import trace

# (percent done or None, one line of text)
Progress = Callable[[Optional[float], str], None]


def _libvirt_uri(source: str, params: dict[str, str]) -> str:
    try:
        local = pcmk.local_node_name()
    except KvmhaError:
        local = ""
    if local == source:
        return params.get("hypervisor") or "qemu:///system"
    transport = params.get("migration_transport") or "ssh"
    return f"qemu+{transport}://{source}/system"


def _open_domain(uri: str, name: str, seconds: float = 5.0) -> Any:
    """libvirt domain handle on the source, or None; never blocks longer than seconds."""
    trace(f"libvirt: open {uri}, lookupByName({name}), jobStats() while it migrates")
    try:
        return virt.call_with_deadline(
            lambda: virt.connect(uri, seconds).lookupByName(name), seconds
        )
    except Exception:  # TimeoutError too: progress is best effort, the cluster decides
        return None


def migrate(name: str, host: str, progress: Progress, wait_s: float = 300.0) -> float:
    """Move name to host live; returns the seconds it took. The move constraint is
    always cleared afterwards, so the guest is free to move again."""
    cib = pcmk.query_cib()
    prim = require_guest(cib, name)
    require_host(cib, host)
    st = pcmk.cluster_state()
    source = st.running_on(name)
    if source is None:
        raise UsageError(f"{name} is not running", f"start it: kvmha guest start {name}")
    if source == host:
        raise UsageError(f"{name} runs on {host} already")
    node = st.nodes.get(host)
    if node is None or not node.online or node.standby:
        raise KvmhaError(f"{host} is not online", "pick an online host (kvmha status)")
    dc = datacentre.guest_dc(prim)
    if dc and pcmk.node_attribute(cib, host, datacentre.ATTR) != dc:
        raise UsageError(
            f"{host} is not in data centre {dc!r} of {name}", f"hosts of {dc}: kvmha dc show {dc}"
        )
    meta = pcmk.nvpairs(prim, "meta_attributes")
    if meta.get("allow-migrate", "false").lower() not in ("true", "1", "yes", "on"):
        raise KvmhaError(
            f"live migration is off for {name}", f"pcs resource meta {name} allow-migrate=true"
        )
    params = pcmk.nvpairs(prim, "instance_attributes")
    dom = _open_domain(_libvirt_uri(source, params), name)
    t0 = time.monotonic()
    pcmk.crm_resource("--move", "--resource", name, "--node", host)
    try:
        deadline = t0 + wait_s
        while True:
            st = pcmk.cluster_state()
            if st.running_on(name) == host:
                progress(100.0, f"{name} runs on {host}")
                return time.monotonic() - t0
            r = st.resources.get(name)
            if r is not None and r.failed:
                raise KvmhaError(
                    f"migration of {name} to {host} failed", "see 'crm_mon -1 --include=failures'"
                )
            if time.monotonic() > deadline:
                raise KvmhaError(
                    f"{name} is not on {host} after {wait_s:.0f} s",
                    "see 'crm_mon -1 --include=failures'",
                )
            pct, text = None, f"{name}: {r.role.lower() if r else 'moving'} {source} -> {host}"
            if dom is not None:
                with contextlib.suppress(Exception):
                    stats = dom.jobStats()
                    total = int(stats.get("data_total", 0) or 0)
                    done = int(stats.get("data_processed", 0) or 0)
                    if total:
                        pct = min(99.0, 100.0 * done / total)
                        text = (
                            f"{name}: {done >> 20}/{total >> 20} MiB to {host}, "
                            f"{int(stats.get('data_remaining', 0) or 0) >> 20} MiB left"
                        )
            progress(pct, text)
            time.sleep(0.2)
    finally:
        with contextlib.suppress(KvmhaError):
            pcmk.crm_resource("--clear", "--resource", name)
