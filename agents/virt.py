"""libvirt access for the agent: one connection per run, every call bounded by the
operation's deadline, libvirt's own error printing silenced, errors turned into reasons.

How calls are bounded: a watchdog thread (the low-level ``_thread`` module, already built
into the interpreter, so it costs nothing to import) sleeps until the operation deadline
(the op timeout minus a margin).  libvirt-python releases the GIL around every C call, so
the watchdog runs even while the main thread is blocked inside libvirt (a hung libvirtd, a
dead TCP peer, an NFS stat).  When the deadline passes, the watchdog asks the current
action for a verdict (e.g. a probe or a stop can still decide from the QEMU process list),
prints the exit reason and ends the process with ``os._exit``; Pacemaker never sees a
timeout of ours, and no libvirt call can outlive the operation.  Keepalive is not used:
it needs a libvirt event loop thread and only detects dead peers, not a hung daemon.
"""

from __future__ import annotations

import _thread
import os
import time

from . import ocf

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable, Tuple

    Verdict = Tuple[int, str]

# libvirt constants used here (stable ABI values, so no libvirt import is needed to use them)
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_OPERATION_INVALID = 55
VIR_ERR_NO_CONNECT = 5
VIR_ERR_SYSTEM_ERROR = 38
VIR_ERR_INVALID_ARG = 8
VIR_ERR_AGENT_UNRESPONSIVE = 86
VIR_ERR_AGENT_UNSYNCED = 97
VIR_FROM_RPC = 7  # error domains of the connection to libvirtd itself
VIR_FROM_REMOTE = 13

DOMAIN_STATE_NAMES = {
    0: "no state",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutting down",
    5: "shut off",
    6: "crashed",
    7: "pmsuspended",
}
SHUTOFF = 5
CRASHED = 6


class Watchdog:
    """Ends the process with a verdict when the operation deadline passes."""

    def __init__(self, deadline: float, environ: Any = None) -> None:
        self.deadline = deadline
        self.step = "starting"
        self.verdict: Callable[[str], Verdict] = self.default_verdict
        self.finished = False
        self._lock = _thread.allocate_lock()
        self._environ = environ
        _thread.start_new_thread(self._run, ())

    def default_verdict(self, step: str) -> Verdict:
        return ocf.ERR_GENERIC, f"operation timed out while {step}"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def finish(self) -> bool:
        """Called by the main thread before it exits; False if the watchdog already fired."""
        with self._lock:
            if self.finished:
                return False
            self.finished = True
            return True

    def _run(self) -> None:
        while True:
            if self.finished:
                return
            rem = self.deadline - time.monotonic()
            if rem <= 0:
                break
            time.sleep(min(rem, 0.1))
        if not self._lock.acquire(blocking=False):
            return
        if self.finished:
            self._lock.release()
            return
        self.finished = True
        try:
            rc, reason = self.verdict(self.step)
        except Exception as e:  # the verdict itself must never hang or trace
            rc, reason = ocf.ERR_GENERIC, f"operation timed out while {self.step} ({e})"
        if reason:
            ocf.exit_reason(reason, self._environ)
        os._exit(rc)


def load_libvirt() -> ModuleType:
    """Import libvirt lazily, with its default stderr error printing turned off."""
    try:
        import libvirt
    except ImportError as e:
        raise ocf.AgentError(ocf.ERR_INSTALLED, f"python3-libvirt is not installed ({e})") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt  # type: ignore[no-any-return]


def err_code(exc: BaseException) -> int:
    get = getattr(exc, "get_error_code", None)
    code = get() if get else None
    return code if isinstance(code, int) else -1


def err_text(exc: BaseException) -> str:
    get = getattr(exc, "get_error_message", None)
    msg = get() if get else None
    return str(msg if msg else exc).strip()


def is_local_uri(uri: str) -> bool:
    """True for URIs that talk to this host's daemon (no host part), e.g. qemu:///system."""
    _scheme, sep, rest = uri.partition("://")
    return bool(sep) and rest.startswith("/")


class Conn:
    """The run's single libvirt connection plus the watchdog step bookkeeping."""

    def __init__(self, libvirt: ModuleType, uri: str, watchdog: Watchdog) -> None:
        self.lv = libvirt
        self.uri = uri
        self.wd = watchdog
        self.wd.step = f"connecting to {uri}"
        self.conn: Any = libvirt.open(uri)

    def call(self, step: str, fn: Callable[..., Any], *args: Any) -> Any:
        self.wd.step = step
        return fn(*args)

    def lookup(self, name: str) -> Any | None:
        """The domain, or None when libvirt does not know it."""
        try:
            return self.call(f"looking up domain {name}", self.conn.lookupByName, name)
        except self.lv.libvirtError as e:
            if err_code(e) == VIR_ERR_NO_DOMAIN:
                return None
            raise

    def state(self, dom: Any) -> Tuple[int, int]:
        """(state, reason); a domain that vanished (transient, stopped) is shut off."""
        try:
            st = self.call(f"reading the state of {dom.name()}", dom.state)
        except self.lv.libvirtError as e:
            if err_code(e) == VIR_ERR_NO_DOMAIN:
                return SHUTOFF, 0
            raise
        return int(st[0]), int(st[1])
