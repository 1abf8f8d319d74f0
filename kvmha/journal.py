"""journald's native protocol and sd_notify, with the standard library only.

One log entry per event, to exactly one place:

- journald, when its socket (``/run/systemd/journal/socket``) answers: one datagram per
  entry with ``MESSAGE``, ``PRIORITY``, ``SYSLOG_IDENTIFIER``, ``SYSLOG_FACILITY`` and
  the caller's structured fields (upper case, e.g. ``KVMHA_KEY``); an entry too big
  for a datagram goes in a sealed memfd passed with SCM_RIGHTS, as sd_journal_send does;
- otherwise syslog (``/dev/log``) when it exists and stderr is not a journal stream;
- otherwise stderr (a unit's or the lab's log file).

Never two of them: under systemd stderr is itself read by journald (``JOURNAL_STREAM``),
which is how every line used to be logged twice.
"""

from __future__ import annotations

import array
import logging
import logging.handlers
import os
import socket
import struct
import sys
import traceback
from collections.abc import Mapping
from typing import Any, Optional

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_SOCKET = "/dev/log"
FIELD_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
PRIORITY = {  # logging level -> syslog priority
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
FACILITIES = logging.handlers.SysLogHandler.facility_names


def field_name(name: str) -> str:
    """A journal field name: upper case letters, digits, '_'; not starting with '_'."""
    out = "".join(c if c in FIELD_OK else "_" for c in name.upper()).lstrip("_")
    if not out or out[0].isdigit():
        out = "F_" + out
    return out[:64]


def encode_entry(fields: Mapping[str, Any]) -> bytes:
    """The native protocol: KEY=value lines; values with a newline in the binary form."""
    parts = []
    for k, v in fields.items():
        if v is None:
            continue
        name = field_name(k).encode()
        data = v if isinstance(v, bytes) else str(v).encode("utf-8", "replace")
        if b"\n" in data:
            parts.append(name + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(name + b"=" + data + b"\n")
    return b"".join(parts)


def priority(level: int) -> int:
    for lv in sorted(PRIORITY, reverse=True):
        if level >= lv:
            return PRIORITY[lv]
    return 7


class JournalHandler(logging.Handler):
    """Sends each record as one journal entry; ``extra={"journal": {...}}`` adds fields."""

    def __init__(self, identifier: str, facility: int, path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.facility = facility
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.connect(path)

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + "".join(traceback.format_exception(*record.exc_info))
        f: dict[str, Any] = {
            "MESSAGE": msg,
            "PRIORITY": priority(record.levelno),
            "SYSLOG_IDENTIFIER": self.identifier,
            "SYSLOG_FACILITY": self.facility,
            "SYSLOG_PID": os.getpid(),
            "CODE_FILE": record.pathname,
            "CODE_LINE": record.lineno,
            "CODE_FUNC": record.funcName,
        }
        extra = getattr(record, "journal", None)
        if isinstance(extra, Mapping):
            f.update({field_name(str(k)): v for k, v in extra.items()})
        return f

    def emit(self, record: logging.LogRecord) -> None:
        try:
            send(self.sock, encode_entry(self.fields(record)))
        except Exception:  # logging must never take the daemon down
            self.handleError(record)

    def close(self) -> None:
        self.sock.close()
        super().close()


def send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.send(data)
        return
    except OSError as exc:
        if exc.errno not in (90, 105):  # EMSGSIZE, ENOBUFS: too big for a datagram
            raise
    fd = os.memfd_create("journal-entry", os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, data)
        import fcntl

        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    finally:
        os.close(fd)


def journal_socket(path: str = JOURNAL_SOCKET) -> bool:
    """True when journald's native socket accepts datagrams."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def stderr_is_journal() -> bool:
    """systemd connected our stderr to journald (JOURNAL_STREAM=dev:inode)."""
    js = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in js.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def configure(
    log: logging.Logger,
    identifier: str,
    use_syslog: bool = True,
    journal_path: Optional[str] = None,
    syslog_path: Optional[str] = None,
) -> str:
    """Give `log` exactly one destination; returns which: journal, syslog or stderr.

    HA conventions: ``HA_LOGFACILITY`` (default daemon; ``none`` = no syslog or journal),
    ``HA_debug`` (1 = debug messages too).
    """
    journal_path = journal_path or JOURNAL_SOCKET
    syslog_path = syslog_path or SYSLOG_SOCKET
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    ha_debug = os.environ.get("HA_debug", "0")  # noqa: SIM112 (the HA convention)
    log.setLevel(logging.DEBUG if ha_debug not in ("", "0", "false", "no", "off") else logging.INFO)
    facility_name = os.environ.get("HA_LOGFACILITY", "daemon").lower()
    facility = FACILITIES.get(facility_name, FACILITIES["daemon"])
    wanted = use_syslog and facility_name not in ("", "none")
    if wanted and journal_socket(journal_path):
        try:
            log.addHandler(JournalHandler(identifier, facility, journal_path))
            return "journal"
        except OSError:
            pass
    if wanted and os.path.exists(syslog_path) and not stderr_is_journal():
        try:
            sh = logging.handlers.SysLogHandler(syslog_path, facility=facility)
            sh.setFormatter(logging.Formatter(f"{identifier}[%(process)d]: %(message)s"))
            log.addHandler(sh)
            return "syslog"
        except OSError:
            pass
    err = logging.StreamHandler(sys.stderr)
    fmt = (
        "%(levelname)s: %(message)s"
        if stderr_is_journal()
        else "%(asctime)s %(levelname)s: %(message)s"
    )
    err.setFormatter(logging.Formatter(fmt))
    log.addHandler(err)
    return "stderr"


def sd_notify(*lines: str) -> bool:
    """Tell systemd (Type=notify) about our state; False when not run under it."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(addr)
        s.sendall("\n".join(lines).encode())
        return True
    except OSError:
        return False
    finally:
        s.close()


def audit_fields(record: Mapping[str, Any], message_id: Optional[str] = None) -> dict[str, Any]:
    """An audit record's structured fields: KVMHA_KEY, KVMHA_TARGET, KVMHA_ACTION, ..."""
    out: dict[str, Any] = {}
    if message_id:
        out["MESSAGE_ID"] = message_id
    alias = {"plug": "target"}
    for k, v in record.items():
        if v is None or k == "time":
            continue
        out["KVMHA_" + field_name(alias.get(k, k))] = (
            v if not isinstance(v, (list, dict)) else _json(v)
        )
    return out


def _json(v: Any) -> str:
    import json

    return json.dumps(v, default=str)
