"""Tiny OCF Resource Agent API 1.1 helpers: exit codes, environment, exit reasons, logging.

This module is on every agent run (many times a minute per guest), so it imports nothing
beyond what the interpreter has already loaded (``os``, ``sys``, ``time``); ``syslog`` is
imported only on paths that actually log.  The metadata XML builder lives in
``kvmha.agents.metadata`` and is imported only by the meta-data action.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping

# Exit codes (OCF RA API 1.1, "Return codes").
SUCCESS = 0
ERR_GENERIC = 1
ERR_ARGS = 2
ERR_UNIMPLEMENTED = 3
ERR_PERM = 4
ERR_INSTALLED = 5
ERR_CONFIGURED = 6
NOT_RUNNING = 7
RUNNING_PROMOTED = 8
FAILED_PROMOTED = 9
DEGRADED = 190
DEGRADED_PROMOTED = 191

RC_NAMES = {
    SUCCESS: "OCF_SUCCESS",
    ERR_GENERIC: "OCF_ERR_GENERIC",
    ERR_ARGS: "OCF_ERR_ARGS",
    ERR_UNIMPLEMENTED: "OCF_ERR_UNIMPLEMENTED",
    ERR_PERM: "OCF_ERR_PERM",
    ERR_INSTALLED: "OCF_ERR_INSTALLED",
    ERR_CONFIGURED: "OCF_ERR_CONFIGURED",
    NOT_RUNNING: "OCF_NOT_RUNNING",
    RUNNING_PROMOTED: "OCF_RUNNING_PROMOTED",
    FAILED_PROMOTED: "OCF_FAILED_PROMOTED",
    DEGRADED: "OCF_DEGRADED",
    DEGRADED_PROMOTED: "OCF_DEGRADED_PROMOTED",
}

_TRUE = frozenset(("1", "yes", "true", "on", "y"))
_FALSE = frozenset(("0", "no", "false", "off", "n", ""))


class AgentError(Exception):
    """An error with an OCF exit code and a one-line reason for Pacemaker."""

    def __init__(self, rc: int, reason: str) -> None:
        super().__init__(reason)
        self.rc = rc
        self.reason = reason


def parse_bool(value: str) -> bool | None:
    """OCF booleans (ocf_is_true spelling); None when the value is not a boolean."""
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    return None


def is_true(value: str | None) -> bool:
    return parse_bool(value or "") is True


class Env:
    """Read-only view of what Pacemaker passes in the environment."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ

    def get(self, name: str, default: str = "") -> str:
        return self.environ.get(name, default)

    def param(self, name: str) -> str | None:
        """OCF_RESKEY_<name>, or None when unset."""
        return self.environ.get("OCF_RESKEY_" + name)

    def meta(self, name: str, default: str = "") -> str:
        """OCF_RESKEY_CRM_meta_<name> (Pacemaker spells '-' as '_')."""
        return self.environ.get("OCF_RESKEY_CRM_meta_" + name.replace("-", "_"), default)

    def meta_int(self, name: str, default: int) -> int:
        raw = self.meta(name)
        try:
            return int(raw) if raw else default
        except ValueError:
            return default

    @property
    def interval_ms(self) -> int:
        return self.meta_int("interval", 0)

    def is_probe(self, action: str) -> bool:
        """A probe is a monitor with interval 0 (ocf_is_probe)."""
        return action in ("monitor", "status") and self.interval_ms == 0

    @property
    def check_level(self) -> int:
        raw = self.environ.get("OCF_CHECK_LEVEL", "0")
        try:
            return int(raw)
        except ValueError:
            return 0

    @property
    def instance(self) -> str:
        return self.environ.get("OCF_RESOURCE_INSTANCE", "")

    def timeout_s(self, default_s: float) -> float:
        """The operation timeout (OCF_RESKEY_CRM_meta_timeout is in ms)."""
        ms = self.meta_int("timeout", 0)
        return ms / 1000.0 if ms > 0 else default_s


def exit_reason(msg: str, environ: Mapping[str, str] | None = None) -> None:
    """Print one exit-reason line on stderr for Pacemaker (ocf_exit_reason)."""
    env = os.environ if environ is None else environ
    prefix = env.get("OCF_EXIT_REASON_PREFIX", "ocf-exit-reason:")
    line = prefix + " ".join(msg.split()) + "\n"
    import contextlib  # lazy: only failures print a reason

    with contextlib.suppress(OSError):
        os.write(2, line.encode("utf-8", "replace"))


# ---------------------------------------------------------------- logging (syslog style)
_FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "local0": 16,
    "local1": 17,
    "local2": 18,
    "local3": 19,
    "local4": 20,
    "local5": 21,
    "local6": 22,
    "local7": 23,
}
_PRIORITIES = {
    "crit": 2,
    "err": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}


class Logger:
    """ocf_log for Python: syslog facility from HA_LOGFACILITY (``none`` turns syslog off),
    the tag from HA_LOGTAG (default ``Guest(<resource>)``), debug lines only with
    HA_debug=1, and a copy to HA_LOGFILE (or HA_DEBUGLOG for debug) when set.  Tracing of
    one operation like ocf-shellfuncs' trace_ra: with OCF_TRACE_RA=1 (the resource's
    ``trace_ra=1`` meta attribute, passed as OCF_RESKEY_trace_ra) every line, debug
    included, goes to OCF_TRACE_FILE, or to
    ``$HA_VARLIB/trace_ra/<type>/<resource>.<action>.<date>`` (HA_VARLIB defaults to
    /var/lib/heartbeat).  ``syslog`` is imported on the first message only."""

    def __init__(
        self, tag: str, environ: Mapping[str, str] | None = None, action: str = ""
    ) -> None:
        self.env = os.environ if environ is None else environ
        self.tag = self.env.get("HA_LOGTAG") or tag
        self._opened = False
        self.trace_path = self._trace_path(action) if self.tracing() else ""

    def tracing(self) -> bool:
        raw = self.env.get("OCF_TRACE_RA") or self.env.get("OCF_RESKEY_trace_ra") or ""
        return raw.strip().lower() in _TRUE

    def _trace_path(self, action: str) -> str:
        explicit = self.env.get("OCF_TRACE_FILE", "")
        if explicit.startswith("/"):
            return explicit
        base = self.env.get("HA_VARLIB") or "/var/lib/heartbeat"
        rtype = self.env.get("OCF_RESOURCE_TYPE") or "Guest"
        rsc = (self.env.get("OCF_RESOURCE_INSTANCE") or "unknown").replace("/", "_")
        stamp = time.strftime("%Y-%m-%d.%H:%M:%S")
        return f"{base}/trace_ra/{rtype}/{rsc}.{action or 'none'}.{stamp}"

    def debug_enabled(self) -> bool:
        if self.trace_path:
            return True
        return self.env.get("HA_debug", "0") not in ("", "0", "false", "no", "off")

    def log(self, level: str, msg: str) -> None:
        if level == "debug" and not self.debug_enabled():
            return
        text = " ".join(msg.split())
        facility = self.env.get("HA_LOGFACILITY", "daemon").strip().lower()
        if facility not in ("none", "") and (level != "debug" or self._debug_to_syslog()):
            try:
                import syslog

                if not self._opened:
                    syslog.openlog(self.tag, syslog.LOG_PID, _FACILITIES.get(facility, 3) << 3)
                    self._opened = True
                syslog.syslog(_PRIORITIES.get(level, 6), f"{level.upper()}: {text}")
            except OSError:
                pass
        path = self.env.get("HA_DEBUGLOG" if level == "debug" else "HA_LOGFILE", "")
        if not path and level == "debug":
            path = self.env.get("HA_LOGFILE", "")
        if level == "debug" and not self._debug_to_syslog():
            path = ""  # traced only: debug lines go to the trace file alone
        line = f"{time.strftime('%b %d %H:%M:%S')} {self.tag}[{os.getpid()}]: "
        line += f"{level.upper()}: {text}\n"
        for target in filter(None, (path, self.trace_path)):
            self._append(target, line)
        if sys.stderr.isatty():  # interactive use (crm_resource --force-*, by hand)
            sys.stderr.write(f"{level.upper()}: {text}\n")

    def _debug_to_syslog(self) -> bool:
        return self.env.get("HA_debug", "0") not in ("", "0", "false", "no", "off")

    def _append(self, path: str, line: str) -> None:
        try:
            if path == self.trace_path:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError:
            pass

    def debug(self, msg: str) -> None:
        self.log("debug", msg)

    def info(self, msg: str) -> None:
        self.log("info", msg)

    def warning(self, msg: str) -> None:
        self.log("warning", msg)

    def error(self, msg: str) -> None:
        self.log("err", msg)
