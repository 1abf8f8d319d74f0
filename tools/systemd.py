"""Service state: systemd units over D-Bus where systemd runs, processes where it does not.

Where systemd is the init (``/run/systemd/system`` exists, as ``sd_booted()`` tests), a
unit's state is read from ``org.freedesktop.systemd1`` over the system bus with
dbus-python: the Manager's ``GetUnit`` (``LoadUnit`` for a unit not loaded yet) gives the
unit's object, whose ``org.freedesktop.systemd1.Unit`` properties say whether it runs
(``ActiveState``, ``SubState``) and starts at boot (``UnitFileState``). A bus address can
be given instead of the system bus (tests run a private dbus-daemon).

Where it is not (a container, the kvmha lab: PID 1 is the lab's own init), services are
found as processes: ``/proc/*/comm`` and ``/proc/*/cmdline`` are read, and only the
processes of this PID namespace count (in a lab on the same machine, every host is a PID
namespace of its own; the machine's ``/proc`` shows their daemons too). Nothing here
signals a process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Optional

from kvmha.errors import KvmhaError

SYSTEMD_BUS_NAME = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"

# UnitFileState values under which a unit starts at boot (or is pulled in by one that does)
ENABLED_STATES = frozenset(
    {"enabled", "enabled-runtime", "static", "alias", "indirect", "generated"}
)


class SystemdError(KvmhaError):
    """systemd could not be asked (no bus, no systemd on it, a call timed out)."""


@dataclasses.dataclass(frozen=True)
class UnitState:
    """What systemd says about one unit."""

    name: str
    load_state: str  # loaded, not-found, masked, error...
    active_state: str  # active, inactive, failed, activating, deactivating, reloading
    sub_state: str  # running, dead, exited, failed...
    unit_file_state: str  # enabled, disabled, static, masked... ("" when there is no file)

    @property
    def found(self) -> bool:
        return self.load_state not in ("not-found", "")

    @property
    def active(self) -> bool:
        return self.active_state in ("active", "reloading")

    @property
    def enabled(self) -> bool:
        return self.unit_file_state in ENABLED_STATES

    def describe(self) -> str:
        if not self.found:
            return f"{self.name} is not installed (LoadState {self.load_state or 'unknown'})"
        return (
            f"{self.name} is {self.active_state} ({self.sub_state}), "
            f"{self.unit_file_state or 'no unit file state'}"
        )


def systemd_booted(run_dir: str = "/run/systemd/system") -> bool:
    """True when systemd is this system's init: the test of sd_booted(3)."""
    return os.path.isdir(run_dir)


def pid1_name(proc: str = "/proc") -> str:
    """The command name of PID 1 in this PID namespace ('systemd', 'python3'...)."""
    try:
        return Path(proc, "1", "comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "unknown"


class SystemdBus:
    """Unit states from systemd's Manager over D-Bus (the system bus, or a given address)."""

    def __init__(self, address: Optional[str] = None, timeout: float = 5.0) -> None:
        self.address = address
        self.timeout = timeout
        try:
            import dbus
        except ImportError as exc:
            raise SystemdError(
                "dbus-python is not installed", "install python3-dbus (dnf install python3-dbus)"
            ) from exc
        self._dbus: Any = dbus
        where = address or "the system bus"
        try:
            if address:
                self._bus: Any = dbus.bus.BusConnection(address)
            else:
                self._bus = dbus.SystemBus(private=True)
        except dbus.exceptions.DBusException as exc:
            raise SystemdError(
                f"cannot connect to {where}: {_dbus_message(exc)}",
                "check that dbus is running (systemctl status dbus)",
            ) from exc
        self._where = where
        try:
            manager = self._bus.get_object(SYSTEMD_BUS_NAME, SYSTEMD_PATH, introspect=False)
        except dbus.exceptions.DBusException as exc:  # nobody owns the name: no systemd
            self.close()
            raise self._error("as org.freedesktop.systemd1", exc) from exc
        self._manager: Any = dbus.Interface(manager, MANAGER_IFACE)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection is no error
            self._bus.close()

    def __enter__(self) -> SystemdBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unit_path(self, name: str) -> str:
        exceptions = self._dbus.exceptions
        try:
            return str(self._manager.GetUnit(name, timeout=self.timeout))
        except exceptions.DBusException as exc:
            if exc.get_dbus_name() != NO_SUCH_UNIT:
                raise self._error(f"GetUnit({name})", exc) from exc
        # not loaded: LoadUnit loads it (or gives a unit whose LoadState is not-found)
        try:
            return str(self._manager.LoadUnit(name, timeout=self.timeout))
        except exceptions.DBusException as exc:
            if exc.get_dbus_name() == NO_SUCH_UNIT:
                return ""
            raise self._error(f"LoadUnit({name})", exc) from exc

    def unit(self, name: str) -> UnitState:
        """The state of one unit; a unit systemd does not know is 'not-found', no error."""
        path = self._unit_path(name)
        if not path:
            return UnitState(name, "not-found", "inactive", "dead", "")
        try:
            obj = self._bus.get_object(SYSTEMD_BUS_NAME, path, introspect=False)
            props = obj.GetAll(UNIT_IFACE, dbus_interface=PROPERTIES_IFACE, timeout=self.timeout)
        except self._dbus.exceptions.DBusException as exc:
            raise self._error(f"the properties of {name}", exc) from exc
        return UnitState(
            name,
            str(props.get("LoadState", "")),
            str(props.get("ActiveState", "")),
            str(props.get("SubState", "")),
            str(props.get("UnitFileState", "")),
        )

    def _error(self, what: str, exc: Any) -> SystemdError:
        return SystemdError(
            f"systemd on {self._where} did not answer {what}: {_dbus_message(exc)}",
            "check systemd and dbus (systemctl status dbus; journalctl -b -u dbus)",
        )


def _dbus_message(exc: Any) -> str:
    name = exc.get_dbus_name() or "error"
    msg = exc.get_dbus_message() or ""
    first = msg.strip().splitlines()[0] if msg.strip() else ""
    return f"{name}: {first}" if first else str(name)


# ---- processes ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Proc:
    pid: int
    comm: str
    argv: tuple[str, ...]
    state: str  # R, S, D, T (stopped), t, Z...

    @property
    def stopped(self) -> bool:
        """Stopped by a signal (SIGSTOP) or a debugger: it exists but does nothing."""
        return self.state in ("T", "t")


@dataclasses.dataclass(frozen=True)
class ProcMatch:
    """A process that is the service: its command name, or a word of its command line.

    ``comm`` is the kernel's 15-character command name (``/proc/PID/comm``); ``arg``
    matches a process one of whose first four arguments is it, or a path whose last part
    is it (a Python daemon runs as ``python3 -I /usr/sbin/NAME`` or ``python3 -m MODULE``).
    """

    comm: str = ""
    arg: str = ""

    def matches(self, p: Proc) -> bool:
        if self.comm and p.comm == self.comm:
            return True
        if self.arg:
            for arg in p.argv[:4]:
                if arg == self.arg or arg.rsplit("/", 1)[-1] == self.arg:
                    return True
        return False


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _pid_ns(proc: str, pid: str) -> Optional[str]:
    try:
        return os.readlink(f"{proc}/{pid}/ns/pid")
    except OSError:
        return None


def list_processes(proc: str = "/proc", same_pid_ns: bool = True) -> list[Proc]:
    """The processes of this PID namespace (kernel threads and zombies left out).

    With ``same_pid_ns``, a process whose ``ns/pid`` link differs from ours is skipped: a
    /proc mounted from a parent namespace also shows its children's processes. Where the
    link cannot be read (another user's process), the process counts.
    """
    mine = _pid_ns(proc, "self") if same_pid_ns else None
    procs = []
    try:
        names = os.listdir(proc)
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        stat = _read(f"{proc}/{name}/stat")
        cmdline = _read(f"{proc}/{name}/cmdline")
        if stat is None or cmdline is None or not cmdline:
            continue  # gone, or a kernel thread (empty command line)
        fields = stat.decode("utf-8", "replace").rsplit(")", 1)[-1].split()
        state = fields[0] if fields else "?"
        if state in ("Z", "X"):
            continue
        if mine is not None:
            ns = _pid_ns(proc, name)
            if ns is not None and ns != mine:
                continue
        comm_b = _read(f"{proc}/{name}/comm") or b""
        argv = tuple(a.decode("utf-8", "replace") for a in cmdline.rstrip(b"\0").split(b"\0"))
        procs.append(Proc(int(name), comm_b.decode("utf-8", "replace").strip(), argv, state))
    return sorted(procs, key=lambda p: p.pid)


def find_processes(matches: tuple[ProcMatch, ...], procs: list[Proc]) -> list[Proc]:
    return [p for p in procs if any(m.matches(p) for m in matches)]
