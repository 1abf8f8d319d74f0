"""Hosts' capacity for guests: CPUs and memory from libvirt's node info, written as node
utilization (``cpu``, ``hv_memory`` and ``host_memory`` in MiB) with
``placement-strategy=balanced``, so that Pacemaker places guests by their utilization and
``kvmha plan`` sees what fits.

libvirt is read through the one libvirt core module (kvmha/virt.py), bounded like every
libvirt call in kvmha.
"""

from __future__ import annotations

from typing import Any

from kvmha import pcmk, placement
from kvmha.errors import KvmhaError, UsageError

DEFAULT_RESERVE_MIB = 1024  # for the host itself: kernel, libvirtd, the cluster stack


def libvirt_node_info(uri: str = "qemu:///system", seconds: float = 10.0) -> tuple[int, int]:
    """(CPUs, memory MiB) of the host behind uri; KvmhaError when it does not answer."""
    from kvmha import virt

    def work() -> Any:
        conn = virt.connect(uri, seconds, readonly=True)
        try:
            return conn.getInfo()
        finally:
            conn.close()

    try:
        info = virt.call_with_deadline(work, seconds)
    except TimeoutError:
        raise KvmhaError(f"libvirt at {uri} did not answer within {seconds:.0f} s") from None
    except Exception as exc:  # libvirtError, ConnectTimeout, LibvirtUnavailable alike
        raise KvmhaError(f"cannot read node info from libvirt at {uri}: {exc}") from exc
    return int(info[2]), int(info[1])


def set_capacity(host: str, cpu: int, memory_mib: int) -> list[str]:
    """Write host's capacity; placement-strategy becomes balanced only once every host
    has one (Pacemaker counts a missing capacity as none: guests with utilization could
    run nowhere else). Returns the hosts still without a capacity."""
    cib = pcmk.query_cib()
    from kvmha.guests import require_host

    require_host(cib, host)
    if cpu < 1 or memory_mib < 64:
        raise UsageError(f"capacity cpu {cpu}, memory {memory_mib} MiB is too small")
    changes = [
        c
        for c in placement.host_capacity_changes(host, cpu, memory_mib)
        if not isinstance(c, placement.SetProperty)
    ]
    placement.apply_live(changes)
    caps = placement.node_utilization(pcmk.query_cib())
    missing = sorted(
        h for h, u in caps.items() if any(k not in u for k in placement.HOST_UTILIZATION)
    )
    if not missing:
        placement.apply_live([placement.SetProperty("placement-strategy", "balanced")])
    return missing
