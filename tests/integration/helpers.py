"""Small helpers for integration tests against a lab."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from kvmha.process import module_argv

if TYPE_CHECKING:
    from kvmha.tools.lab.lab import Lab

T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    """Poll fn until it returns something truthy; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def kvmha(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the kvmha CLI as an admin would (a separate process)."""
    return subprocess.run(
        module_argv("kvmha.tools.cli", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_fenced(lab: Lab, host: str, since: int, timeout: float) -> None:
    """Wait for a successful fence of host recorded by the power switch after the first
    since events (len(lab.power_events()) taken before the fault): a shared lab's earlier
    tests may have fenced the same host, and an old record must not end the wait."""
    wait_for(
        f"{host} fenced",
        lambda: any(
            e["host"] == host and e["origin"] == "fence" and e.get("result") == "ok"
            for e in lab.power_events()[since:]
        ),
        timeout,
    )


def powered_libvirts(lab: Lab) -> Iterator[tuple[str, Any]]:
    """(host, libvirt connection) for every powered host whose libvirt answers; each
    connection is closed when the loop moves on."""
    import libvirt

    for h in lab.cfg.host_names():
        if not lab.powered(h):
            continue
        try:
            conn = libvirt.open(lab.cfg.libvirt_uri(h))
        except libvirt.libvirtError:
            continue
        try:
            yield h, conn
        finally:
            conn.close()
