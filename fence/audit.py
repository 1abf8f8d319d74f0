"""The listener's audit log: every request, who asked, what, and the result.

One JSON object per line in a file (reopened when logrotate moves it), and the same
event once more as one log entry: to journald natively with structured fields
(KVMHA_KEY, KVMHA_TARGET, KVMHA_ACTION, KVMHA_RESULT, KVMHA_ORIGIN ...), else to syslog,
else to stderr (see kvmha.journal), with the HA conventions (``HA_LOGFACILITY``, ``HA_debug``).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import threading
import time
from typing import Any, Optional

from kvmha import journal

FACILITIES = logging.handlers.SysLogHandler.facility_names
AUDIT_MESSAGE_ID = "5f0a8f5e3c1b4d3e9a7c2b6d1e4f8a90"  # journalctl MESSAGE_ID=... for audits


class Audit:
    def __init__(self, path: Optional[str], host: str, use_syslog: bool = True) -> None:
        self.path = path
        self.host = host
        self._lock = threading.Lock()
        self._file: Optional[Any] = None
        self._ino: Optional[int] = None
        self.log = logging.getLogger("kvmha-fence-listener")
        # exactly one destination: journald (native, structured), else syslog, else stderr
        self.sink = journal.configure(self.log, "kvmha-fence-listener", use_syslog)
        if path:
            os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)

    def _write(self, line: str) -> None:
        if not self.path:
            return
        with self._lock:
            try:
                ino = os.stat(self.path).st_ino
            except FileNotFoundError:
                ino = None
            if self._file is None or ino != self._ino:
                if self._file is not None:
                    self._file.close()
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                self._file = os.fdopen(fd, "a", encoding="utf-8")
                self._ino = os.fstat(fd).st_ino
            self._file.write(line + "\n")
            self._file.flush()

    def event(self, **fields: Any) -> None:
        """One audit record: 'result' is ok, off, on, denied, refused or error."""
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "listener": self.host}
        record.update({k: v for k, v in fields.items() if v is not None})
        try:
            self._write(json.dumps(record, sort_keys=False, default=str))
        except OSError as exc:
            self.log.error(f"cannot write the audit log {self.path}: {exc}")
        text = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in record.items())
        level = logging.INFO if fields.get("result") in ("ok", "on", "off") else logging.WARNING
        fields = journal.audit_fields(
            {**record, "origin": record.get("origin") or record.get("peer")}, AUDIT_MESSAGE_ID
        )
        self.log.log(level, f"audit {text}", extra={"journal": fields})

    def info(self, msg: str) -> None:
        self.log.info(msg)

    def warning(self, msg: str) -> None:
        self.log.warning(msg)

    def debug(self, msg: str) -> None:
        self.log.debug(msg)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class RefusalLog:
    """Refusals into the audit log, aggregated and rate-limited per source address.

    The first ``burst`` refusals from one address in a ``window`` are logged one by one;
    beyond that they are only counted, and one "suppressed" record per address and window
    says how many, with their problem codes -- a flood cannot fill the disk, and the log
    still shows it happened.
    """

    def __init__(self, audit: Audit, burst: int = 20, window: float = 10.0) -> None:
        self.audit = audit
        self.burst = burst
        self.window = window
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._counts: dict[str, int] = {}
        self._suppressed: dict[str, dict[str, int]] = {}

    def add(self, peer: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._start >= self.window:
            self.flush(now)
        with self._lock:
            n = self._counts.get(peer, 0) + 1
            self._counts[peer] = n
            if n > self.burst:
                codes = self._suppressed.setdefault(peer, {})
                code = str(fields.get("code"))
                codes[code] = codes.get(code, 0) + 1
                return
        self.audit.event(peer=peer, result="refused", **fields)

    def flush(self, now: Optional[float] = None) -> None:
        with self._lock:
            suppressed, self._suppressed = self._suppressed, {}
            self._counts = {}
            self._start = time.monotonic() if now is None else now
        for peer, codes in sorted(suppressed.items()):
            self.audit.event(
                peer=peer,
                result="refused",
                code="suppressed",
                count=sum(codes.values()),
                codes=codes,
                detail=f"{sum(codes.values())} more refusals from {peer} in {self.window:.0f} s",
            )
