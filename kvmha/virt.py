"""The one home of kvmha's libvirt plumbing: connections bounded by a deadline, domain
state and state-reason names, libvirt error codes and error text, the resource mark in a
domain's <metadata>, and the deadline watchdog.

Everything that talks to libvirt (the resource agent, the fence listener, the CLI, doctor,
the lab) goes through this module.  It is on the agent's monitor path (many runs a minute
per guest), so it imports nothing at module level beyond what the interpreter has already
loaded: libvirt itself is imported by :func:`load_libvirt` only, XML parsing inside the
functions that parse.  The constants below are libvirt's stable ABI values (checked
against libvirt-python by tests/unit/test_agent_virt.py), so callers can name states and
errors without importing libvirt.

The watchdog knows nothing of OCF: it asks a *verdict* callback what to answer when the
deadline passes (e.g. "decide from the QEMU process list") and hands the answer to an
*exit* callback (the agent prints an exit reason and ends the process with ``os._exit``;
an in-process caller interrupts its main thread instead).
"""

from __future__ import annotations

import _thread
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable, Dict, Tuple, TypeVar

    T = TypeVar("T")

    Verdict = Tuple[int, str]

# ------------------------------------------------------------------ error codes (virErrorNumber)
VIR_ERR_INTERNAL_ERROR = 1
VIR_ERR_NO_SUPPORT = 3
VIR_ERR_NO_CONNECT = 5
VIR_ERR_INVALID_ARG = 8
VIR_ERR_OPERATION_FAILED = 9
VIR_ERR_XML_ERROR = 27
VIR_ERR_DOM_EXIST = 28
VIR_ERR_SYSTEM_ERROR = 38
VIR_ERR_RPC = 39
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_NO_NETWORK = 43
VIR_ERR_AUTH_FAILED = 45
VIR_ERR_NO_STORAGE_POOL = 49
VIR_ERR_OPERATION_INVALID = 55
VIR_ERR_OPERATION_TIMEOUT = 68
VIR_ERR_ARGUMENT_UNSUPPORTED = 74
VIR_ERR_OPERATION_ABORTED = 78
VIR_ERR_NO_DOMAIN_METADATA = 80
VIR_ERR_OPERATION_UNSUPPORTED = 84
VIR_ERR_AGENT_UNRESPONSIVE = 86
VIR_ERR_AUTH_UNAVAILABLE = 94
VIR_ERR_AGENT_UNSYNCED = 97
# error domains (virErrorDomain) of the connection to libvirtd itself
VIR_FROM_RPC = 7
VIR_FROM_QEMU = 10
VIR_FROM_REMOTE = 13

ERROR_NAMES: Dict[int, str] = {
    VIR_ERR_INTERNAL_ERROR: "internal error",
    VIR_ERR_NO_SUPPORT: "not supported",
    VIR_ERR_NO_CONNECT: "no connection",
    VIR_ERR_INVALID_ARG: "invalid argument",
    VIR_ERR_OPERATION_FAILED: "operation failed",
    VIR_ERR_XML_ERROR: "XML error",
    VIR_ERR_DOM_EXIST: "domain exists",
    VIR_ERR_SYSTEM_ERROR: "system error",
    VIR_ERR_RPC: "RPC error",
    VIR_ERR_NO_DOMAIN: "no such domain",
    VIR_ERR_NO_NETWORK: "no such network",
    VIR_ERR_AUTH_FAILED: "authentication failed",
    VIR_ERR_NO_STORAGE_POOL: "no such storage pool",
    VIR_ERR_OPERATION_INVALID: "operation invalid in this state",
    VIR_ERR_OPERATION_TIMEOUT: "operation timed out",
    VIR_ERR_ARGUMENT_UNSUPPORTED: "argument unsupported",
    VIR_ERR_OPERATION_ABORTED: "operation aborted",
    VIR_ERR_NO_DOMAIN_METADATA: "no such metadata",
    VIR_ERR_OPERATION_UNSUPPORTED: "operation unsupported",
    VIR_ERR_AGENT_UNRESPONSIVE: "guest agent unresponsive",
    VIR_ERR_AUTH_UNAVAILABLE: "authentication unavailable",
    VIR_ERR_AGENT_UNSYNCED: "guest agent not synced",
}
# errors that may pass if the same call is made again a moment later
TRANSIENT_ERRORS = frozenset(
    (VIR_ERR_OPERATION_TIMEOUT, VIR_ERR_AGENT_UNRESPONSIVE, VIR_ERR_AGENT_UNSYNCED)
)


def err_code(exc: BaseException) -> int:
    """libvirt's error code of an exception (-1 when it is not a libvirtError)."""
    get = getattr(exc, "get_error_code", None)
    code = get() if get else None
    return code if isinstance(code, int) else -1


def err_domain(exc: BaseException) -> int:
    get = getattr(exc, "get_error_domain", None)
    dom = get() if get else None
    return dom if isinstance(dom, int) else -1


def err_text(exc: BaseException) -> str:
    """One line for a human: libvirt's own message, else the exception's text."""
    get = getattr(exc, "get_error_message", None)
    msg = get() if get else None
    return " ".join(str(msg if msg else exc).split())


def connection_lost(exc: BaseException) -> bool:
    """True when the error means the connection to libvirtd broke (it died or restarted),
    not that the operation itself failed."""
    return err_domain(exc) in (VIR_FROM_RPC, VIR_FROM_REMOTE) or err_code(exc) in (
        VIR_ERR_SYSTEM_ERROR,
        VIR_ERR_NO_CONNECT,
    )


def is_transient(exc: BaseException) -> bool:
    """An error worth one more try within the deadline (a lost connection, a timeout)."""
    return connection_lost(exc) or err_code(exc) in TRANSIENT_ERRORS


# ------------------------------------------------------------------ states and reasons
NOSTATE, RUNNING, BLOCKED, PAUSED, SHUTDOWN, SHUTOFF, CRASHED, PMSUSPENDED = range(8)

STATE_NAMES: Dict[int, str] = {
    NOSTATE: "no state",
    RUNNING: "running",
    BLOCKED: "blocked",
    PAUSED: "paused",
    SHUTDOWN: "shutting down",
    SHUTOFF: "shut off",
    CRASHED: "crashed",
    PMSUSPENDED: "pmsuspended",
}
# kept for callers of the agent's former module
DOMAIN_STATE_NAMES = STATE_NAMES

# virDomain<State>Reason, by state: reason number -> name (libvirt's enum, lower case)
REASON_NAMES: Dict[int, Dict[int, str]] = {
    NOSTATE: {0: "unknown"},
    RUNNING: {
        0: "unknown",
        1: "booted",
        2: "migrated",
        3: "restored",
        4: "from_snapshot",
        5: "unpaused",
        6: "migration_canceled",
        7: "save_canceled",
        8: "wakeup",
        9: "crashed",
        10: "postcopy",
        11: "postcopy_failed",
    },
    BLOCKED: {0: "unknown"},
    PAUSED: {
        0: "unknown",
        1: "user",
        2: "migration",
        3: "save",
        4: "dump",
        5: "ioerror",
        6: "watchdog",
        7: "from_snapshot",
        8: "shutting_down",
        9: "snapshot",
        10: "crashed",
        11: "starting_up",
        12: "postcopy",
        13: "postcopy_failed",
        14: "api_error",
    },
    SHUTDOWN: {0: "unknown", 1: "user"},
    SHUTOFF: {
        0: "unknown",
        1: "shutdown",
        2: "destroyed",
        3: "crashed",
        4: "migrated",
        5: "saved",
        6: "failed",
        7: "from_snapshot",
        8: "daemon",
    },
    CRASHED: {0: "unknown", 1: "panicked"},
    PMSUSPENDED: {0: "unknown"},
}

# What a state with its reason means for a guest's health, one row each; anything not
# listed takes its state's row with reason None.  "ok": the guest runs; "held": it exists
# and is stopped on purpose or for a moment (an admin's pause, a migration, a save);
# "failed": it cannot run on by itself (an I/O error, a watchdog, a panic, a failed
# post-copy); "off": it is not running.
HEALTH: Dict[Tuple[int, str | None], str] = {
    (NOSTATE, None): "held",
    (RUNNING, None): "ok",
    (RUNNING, "postcopy_failed"): "failed",
    (BLOCKED, None): "ok",
    (PAUSED, None): "held",
    (PAUSED, "ioerror"): "failed",
    (PAUSED, "watchdog"): "failed",
    (PAUSED, "crashed"): "failed",
    (PAUSED, "postcopy_failed"): "failed",
    (PAUSED, "api_error"): "failed",
    (SHUTDOWN, None): "ok",
    (SHUTOFF, None): "off",
    (CRASHED, None): "failed",
    (PMSUSPENDED, None): "held",
}


def state_name(state: int) -> str:
    return STATE_NAMES.get(state, f"state {state}")


def reason_name(state: int, reason: int) -> str:
    return REASON_NAMES.get(state, {}).get(reason, f"reason {reason}")


def describe(state: int, reason: int) -> str:
    """'paused (ioerror)', 'running (migrated)', 'shut off'; the reason only when known."""
    why = REASON_NAMES.get(state, {}).get(reason, "unknown")
    return state_name(state) if why == "unknown" else f"{state_name(state)} ({why})"


def health(state: int, reason: int) -> str:
    """'ok', 'held', 'failed' or 'off' for a (state, reason) pair (see HEALTH)."""
    why = REASON_NAMES.get(state, {}).get(reason)
    return HEALTH.get((state, why)) or HEALTH.get((state, None)) or "held"


# ------------------------------------------------------------------ URIs
def uri_driver(uri: str) -> str:
    """The hypervisor driver of a URI: 'qemu' for qemu+ssh://h/system, 'lxc' for lxc://."""
    return uri.partition(":")[0].split("+", 1)[0].lower()


def is_local_uri(uri: str) -> bool:
    """True for URIs that talk to this host's daemon (no host part), e.g. qemu:///system."""
    _scheme, sep, rest = uri.partition("://")
    return bool(sep) and rest.startswith("/")


# ------------------------------------------------------------------ libvirt itself
class LibvirtUnavailable(Exception):
    """python3-libvirt cannot be imported on this host."""


class ConnectTimeout(Exception):
    """libvirt did not open the connection within the deadline."""


def load_libvirt() -> ModuleType:
    """Import libvirt lazily, with its default stderr error printing turned off."""
    try:
        import libvirt
    except ImportError as e:
        raise LibvirtUnavailable(f"python3-libvirt is not installed ({e})") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt  # type: ignore[no-any-return]


def call_with_deadline(
    fn: Callable[[], T], seconds: float, on_late: Callable[[T], object] | None = None
) -> T:
    """fn() in a thread of its own (libvirt-python releases the GIL); TimeoutError when it
    has not returned within seconds. The thread is left behind: a libvirt call cannot be
    cancelled; a result it returns after the deadline goes to on_late (to close it). An
    exception fn raises is raised here."""
    box: list[Any] = []
    done = _thread.allocate_lock()
    done.acquire()
    guard = _thread.allocate_lock()  # the result and the caller's giving up, in one order
    abandoned: list[bool] = []

    def work() -> None:
        try:
            result: tuple[bool, Any] = (True, fn())
        except BaseException as exc:  # re-raised in the caller
            result = (False, exc)
        with guard:
            box.append(result)
            late = bool(abandoned)
        if late and result[0] and on_late is not None:
            on_late(result[1])
        done.release()

    _thread.start_new_thread(work, ())
    if not done.acquire(timeout=max(seconds, 0.0)):
        with guard:
            if not box:  # still running: it is abandoned from here on
                abandoned.append(True)
                raise TimeoutError(f"no answer within {seconds:g} s")
    ok, value = box[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def connect(uri: str, timeout: float, *, readonly: bool = False) -> Any:
    """A libvirt connection opened within ``timeout`` seconds (a thread does the open, so a
    hung daemon or a black-holing peer costs at most the timeout).  Raises libvirtError,
    ConnectTimeout or LibvirtUnavailable.  A connection that opens after the timeout is
    closed by its thread."""
    lv = load_libvirt()
    try:
        return call_with_deadline(
            lambda: lv.openReadOnly(uri) if readonly else lv.open(uri),
            timeout,
            on_late=lambda c: c.close(),
        )
    except TimeoutError:
        raise ConnectTimeout(f"libvirt at {uri} did not answer within {timeout:g}s") from None


# ------------------------------------------------------------------ the resource mark
# Every domain the agent starts (or receives by migration) carries this element in its
# <metadata>; libvirt keeps it in the live XML, migrates it with the domain, and writes it
# into /run/libvirt/qemu/<name>.xml, so it can be read without libvirt too.
MARK_NS = "https://kvmha.dev/xmlns/guest/1"
MARK_PREFIX = "kvmha"
MARK_TAG = "resource"


def mark_xml(resource: str) -> str:
    """The metadata element that marks a domain as this resource's."""
    from xml.sax.saxutils import quoteattr

    return f"<{MARK_TAG} id={quoteattr(resource)}/>"


def mark_of_element(domain_el: Any) -> str | None:
    """The resource id marked in a parsed <domain> element, or None."""
    md = domain_el.find("metadata")
    if md is None:
        return None
    el = md.find(f"{{{MARK_NS}}}{MARK_TAG}")
    return el.get("id") if el is not None else None


def with_mark(domain_el: Any, resource: str) -> None:
    """Put the resource mark into a parsed <domain> element (replacing an old one)."""
    import xml.etree.ElementTree as ET

    md = domain_el.find("metadata")
    if md is None:
        md = ET.SubElement(domain_el, "metadata")
    for old in md.findall(f"{{{MARK_NS}}}{MARK_TAG}"):
        md.remove(old)
    ET.register_namespace(MARK_PREFIX, MARK_NS)
    ET.SubElement(md, f"{{{MARK_NS}}}{MARK_TAG}", {"id": resource})


def read_mark(lv: Any, dom: Any) -> str | None:
    """The resource id a live domain is marked with, None when it carries no mark
    (libvirt's VIR_ERR_NO_DOMAIN_METADATA).  Other libvirt errors propagate."""
    try:
        text = dom.metadata(lv.VIR_DOMAIN_METADATA_ELEMENT, MARK_NS, 0)
    except lv.libvirtError as e:
        if err_code(e) == VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise
    import xml.etree.ElementTree as ET

    try:
        el = ET.fromstring(text)
    except ET.ParseError:
        return None
    return el.get("id") if el.tag.endswith(MARK_TAG) else None


class DomainXMLError(ValueError):
    """Text that is not a libvirt domain XML."""


def parse_domain(text: str, where: str) -> Tuple[str, Any]:
    """(name, root element) of a domain XML; DomainXMLError saying why it is not one."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text)  # an admin's file or libvirt's own output
    except ET.ParseError as e:
        raise DomainXMLError(f"{where} is not well-formed XML ({e})") from None
    if root.tag != "domain":
        raise DomainXMLError(
            f"{where} is not a libvirt domain XML (root element <{root.tag}>, expected <domain>)"
        )
    name = (root.findtext("name") or "").strip()
    if not name:
        raise DomainXMLError(f"{where} has no <name> element")
    return name, root


class RuntimeDomain:
    """A domain as libvirtd's own status file describes it (no libvirt call needed)."""

    __slots__ = ("mark", "name", "path", "pid", "uuid")

    def __init__(self, path: str, name: str, uuid: str, pid: int, mark: str | None) -> None:
        self.path, self.name, self.uuid, self.pid, self.mark = path, name, uuid, pid, mark

    def __repr__(self) -> str:
        return (
            f"RuntimeDomain({self.name!r}, uuid={self.uuid!r}, pid={self.pid}, mark={self.mark!r})"
        )


QEMU_STATE_DIR = "/run/libvirt/qemu"


def runtime_domains(
    state_dir: str = QEMU_STATE_DIR, deadline: float | None = None
) -> list[RuntimeDomain]:
    """The running domains that libvirtd's QEMU driver recorded in ``state_dir``
    (``<domstatus pid=...><domain>...</domain></domstatus>``, one file per running domain,
    written by libvirtd at start and kept while QEMU runs, also while libvirtd is down).
    A file whose QEMU pid is gone is left out.  Raises TimeoutError past ``deadline`` and
    OSError when the directory cannot be listed for another reason than being absent."""
    import xml.etree.ElementTree as ET

    try:
        entries = sorted(os.listdir(state_dir))
    except FileNotFoundError:
        return []
    out: list[RuntimeDomain] = []
    for entry in entries:
        if not entry.endswith(".xml"):
            continue
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"reading {state_dir} did not finish in time")
        path = f"{state_dir}/{entry}"
        try:
            with open(path, "rb") as f:
                root = ET.fromstring(f.read(4 << 20))
        except (OSError, ET.ParseError):
            continue
        dom = root.find("domain") if root.tag == "domstatus" else None
        if dom is None:
            continue
        try:
            pid = int(root.get("pid") or "0")
        except ValueError:
            pid = 0
        if pid <= 0 or not _qemu_pid(pid):
            continue
        out.append(
            RuntimeDomain(
                path,
                (dom.findtext("name") or "").strip(),
                (dom.findtext("uuid") or "").strip().lower(),
                pid,
                mark_of_element(dom),
            )
        )
    return out


def _qemu_pid(pid: int, proc: str = "/proc") -> bool:
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            argv0 = f.read(4096).split(b"\0", 1)[0]
    except OSError:
        return False
    return b"qemu" in os.path.basename(argv0)


# ------------------------------------------------------------------ the watchdog
def hard_exit(rc: int, reason: str) -> None:
    """Default exit callback: the reason on stderr, then end the process at once (the main
    thread may be stuck inside a libvirt C call that would never return)."""
    if reason:
        import contextlib

        with contextlib.suppress(OSError):
            os.write(2, (" ".join(reason.split()) + "\n").encode("utf-8", "replace"))
    os._exit(rc)


class Watchdog:
    """Answers for the operation when its deadline passes.

    A thread sleeps until ``deadline`` (time.monotonic()).  libvirt-python releases the GIL
    around every C call, so it runs even while the main thread is blocked inside libvirt
    (a hung libvirtd, a dead TCP peer, an NFS stat).  When the deadline passes it calls
    ``verdict(step)`` -> (code, reason) and hands the result to ``on_exit(code, reason)``,
    which must not return to normal operation (``hard_exit`` ends the process).  The main
    thread calls ``finish()`` when it is done; after that the watchdog never fires.
    """

    def __init__(
        self,
        deadline: float,
        verdict: Callable[[str], Verdict] | None = None,
        on_exit: Callable[[int, str], None] | None = None,
        *,
        timeout_code: int = 1,
    ) -> None:
        self.deadline = deadline
        self.step = "starting"
        self.timeout_code = timeout_code
        self.verdict: Callable[[str], Verdict] = verdict or self.default_verdict
        self.on_exit: Callable[[int, str], None] = on_exit or hard_exit
        self.finished = False
        self.fired: Verdict | None = None
        self._lock = _thread.allocate_lock()
        _thread.start_new_thread(self._run, ())

    def default_verdict(self, step: str) -> Verdict:
        return self.timeout_code, f"operation timed out while {step}"

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
        with self._lock:
            if self.finished:
                return
            self.finished = True
        try:
            rc, reason = self.verdict(self.step)
        except Exception as e:  # the verdict itself must never hang or trace
            rc, reason = self.timeout_code, f"operation timed out while {self.step} ({e})"
        self.fired = (rc, reason)
        self.on_exit(rc, reason)


def interrupt_exit(rc: int, reason: str) -> None:
    """Exit callback for in-process callers (tests, a long-lived daemon): the verdict is
    kept on the watchdog (``fired``) and the main thread gets KeyboardInterrupt as soon as
    it runs Python code again; the caller turns that into the verdict."""
    _thread.interrupt_main()


class Connection:
    """One libvirt connection whose calls name their step for the watchdog, so that the
    answer given at the deadline says what was hanging."""

    def __init__(self, libvirt: ModuleType, uri: str, watchdog: Watchdog | None) -> None:
        self.lv = libvirt
        self.uri = uri
        self.wd = watchdog
        self._step(f"connecting to {uri}")
        self.conn: Any = libvirt.open(uri)

    def _step(self, step: str) -> None:
        if self.wd is not None:
            self.wd.step = step

    def call(self, step: str, fn: Callable[..., Any], *args: Any) -> Any:
        self._step(step)
        return fn(*args)

    def lookup(self, name: str) -> Any | None:
        """The domain, or None when libvirt does not know it."""
        try:
            return self.call(f"looking up domain {name}", self.conn.lookupByName, name)
        except self.lv.libvirtError as e:
            if err_code(e) == VIR_ERR_NO_DOMAIN:
                return None
            raise

    def lookup_uuid(self, uuid: str) -> Any | None:
        try:
            return self.call(f"looking up domain {uuid}", self.conn.lookupByUUIDString, uuid)
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

    def marked(self, resource: str) -> list[Any]:
        """Active domains carrying the resource's mark."""
        self._step(f"listing domains marked {resource}")
        doms = self.conn.listAllDomains(self.lv.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return [d for d in doms if read_mark(self.lv, d) == resource]

    def mark(self, dom: Any) -> str | None:
        self._step("reading the resource mark")
        return read_mark(self.lv, dom)
