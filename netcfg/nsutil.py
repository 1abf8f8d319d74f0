"""Network namespaces from one process: setns(2) in and out, no fork per namespace.

A netlink or packet socket stays in the namespace it was created in, so this process
enters a namespace, opens what it needs there and comes back. That keeps the probe fast
under QEMU/TCG (no helper process per namespace, as pyroute2's NetNS would start).
Only names this project created are ever removed (the caller passes them in).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Iterator
from typing import Any

from kvmha.errors import KvmhaError, UsageError

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_root_fd: int | None = None


def netns_path(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"invalid network namespace name {name!r}")
    path = os.path.join(NETNS_DIR, name)
    if not os.path.exists(path):
        raise UsageError(
            f"network namespace {name!r} does not exist",
            "list them with 'ip netns list'",
        )
    return path


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == 1:
            raise KvmhaError(f"cannot enter network namespace {what}: run as root")
        raise KvmhaError(f"setns({what}): {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block inside netns `name` (None: stay where we are)."""
    global _root_fd
    if name is None:
        yield
        return
    if _root_fd is None:
        _root_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd, name)
    finally:
        os.close(fd)
    try:
        yield
    finally:
        _setns(_root_fd, "of this process")


def iproute(name: str | None = None) -> Any:
    """A pyroute2 IPRoute whose socket lives in netns `name`."""
    from pyroute2 import IPRoute

    with entered(name):
        return IPRoute()


def listnetns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2


def _mount(src: str, target: str, flags: int) -> int:
    return int(_libc.mount(src.encode(), target.encode(), b"none", flags, None))


def _shared_netns_dir() -> None:
    """/run/netns as a shared mount point, as 'ip netns add' makes it."""
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    if _mount("", NETNS_DIR, MS_SHARED | MS_REC) == 0:
        return
    if ctypes.get_errno() == 22:  # EINVAL: not a mount point yet
        if (
            _mount(NETNS_DIR, NETNS_DIR, MS_BIND | MS_REC) != 0
            or _mount("", NETNS_DIR, MS_SHARED | MS_REC) != 0
        ):
            err = ctypes.get_errno()
            raise KvmhaError(f"cannot make {NETNS_DIR} a shared mount: {os.strerror(err)}")
    else:
        err = ctypes.get_errno()
        raise KvmhaError(f"cannot mount {NETNS_DIR}: {os.strerror(err)} (run as root)")


def create(name: str) -> None:
    """Create netns `name` like 'ip netns add', without a fork: this thread unshares a
    new network namespace, bind-mounts it on /run/netns/NAME and goes back."""
    global _root_fd
    if not name or "/" in name:
        raise UsageError(f"invalid network namespace name {name!r}")
    _shared_netns_dir()
    path = os.path.join(NETNS_DIR, name)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd)
    if _root_fd is None:
        _root_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise KvmhaError(f"cannot create network namespace {name}: {os.strerror(err)}")
        try:
            if _mount("/proc/thread-self/ns/net", path, MS_BIND) != 0:
                err = ctypes.get_errno()
                raise KvmhaError(f"cannot bind network namespace {name}: {os.strerror(err)}")
        finally:
            _setns(_root_fd, "of this process")
    except BaseException:
        os.unlink(path)
        raise


def remove(name: str) -> None:
    """Remove netns `name` if it exists (its links go with it once nothing uses it)."""
    path = os.path.join(NETNS_DIR, name)
    if not os.path.exists(path):
        return
    _libc.umount2(path.encode(), MNT_DETACH)
    os.unlink(path)


def sysctl(name: str | None, key: str, value: str | int) -> None:
    """Write /proc/sys/<key> (dots or slashes) inside netns `name`; missing keys are ignored."""
    path = "/proc/sys/" + key.replace(".", "/") if "/" not in key else "/proc/sys/" + key
    with entered(name):
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write(str(value))
        except FileNotFoundError:
            pass


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP end the probe like Ctrl-C, so the finally blocks clean up."""

    def handler(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    old = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
