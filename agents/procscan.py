"""Find the QEMU process of a domain without libvirt (for probes and stops while libvirtd
is down): scan /proc for a qemu process whose command line has ``-name guest=NAME,...``
(libvirt >= 1.2.x) or the plain ``-name NAME`` form.  Bounded by a deadline and a process
count, never blocks: /proc reads do not wait on anything but the kernel."""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List


def name_from_arg(value: str) -> str:
    """The guest name in a QEMU -name argument: 'guest=a,,b,debug-threads=on' -> 'a,b'.
    QEMU option syntax doubles literal commas; a single comma ends the value."""
    if value.startswith("guest="):
        value = value[len("guest=") :]
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == ",":
            if value[i + 1 : i + 2] == ",":
                out.append(",")
                i += 2
                continue
            break
        out.append(c)
        i += 1
    return "".join(out)


def cmdline_guest_name(argv: List[str]) -> str | None:
    """The -name of a QEMU command line, or None when it is not a QEMU with -name."""
    if not argv or "qemu" not in os.path.basename(argv[0]):
        return None
    for i, arg in enumerate(argv[:-1]):
        if arg == "-name":
            return name_from_arg(argv[i + 1])
    return None


def find_qemu_pids(
    name: str, proc: str = "/proc", deadline: float | None = None, max_procs: int = 100000
) -> List[int]:
    """PIDs of QEMU processes running the guest ``name``.  Stops scanning at ``deadline``
    (time.monotonic()) or after ``max_procs`` entries; raises TimeoutError in that case so
    that callers never mistake an incomplete scan for 'no process'."""
    found: List[int] = []
    try:
        entries = os.listdir(proc)
    except OSError:
        raise TimeoutError(f"cannot list {proc}") from None
    for count, entry in enumerate(entries):
        if not entry.isdigit():
            continue
        if count > max_procs or (deadline is not None and time.monotonic() > deadline):
            raise TimeoutError("process scan did not finish in time")
        try:
            with open(f"{proc}/{entry}/cmdline", "rb") as f:
                raw = f.read(65536)
        except OSError:  # gone, or not ours to read
            continue
        if b"qemu" not in raw or b"-name" not in raw:
            continue
        argv = raw.decode("utf-8", "replace").split("\0")
        if argv and argv[-1] == "":
            argv.pop()
        if cmdline_guest_name(argv) == name:
            found.append(int(entry))
    return found
