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
