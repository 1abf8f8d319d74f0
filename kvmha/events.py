"""Recent events of the cluster, newest first: one timeline for `kvmha events` and the console.

Where each kind of event comes from (nothing here is remembered by kvmha itself):
- host fencing: Pacemaker's fencing history (crm_mon ``fence_history``), with who asked
  and who did it, and whether it succeeded;
- guest starts, stops, live migrations and failed operations: the operation history in the
  CIB's status section (``lrm_rsc_op``: operation, host, result, ``last-rc-change``). Pacemaker
  keeps the last operation of each kind per guest and host, and forgets a fenced host's
  history, so this is the *recent* history, not an archive;
- guest-cluster fence requests: the fence listeners' audit log (JSON lines, see
  fence/audit.py), read by the caller and passed in as records.

A failed operation is one whose result differs from the result Pacemaker expected (the
expected code is the third field of its ``transition-key``); probes that find a guest not
running are expected and are not events.
"""

from __future__ import annotations

import contextlib
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from kvmha import pcmk

OCF_NAMES = {
    "0": "ok",
    "1": "generic error",
    "2": "invalid argument",
    "3": "unimplemented",
    "4": "insufficient privileges",
    "5": "not installed",
    "6": "not configured",
    "7": "not running",
    "8": "running (promoted)",
    "9": "failed (promoted)",
}


def parse_time(text: str | None) -> float | None:
    """Unix time from the CIB's seconds since the epoch or a time stamp (Pacemaker's or the
    audit log's ISO 8601, read by pcmk.parse_time, the one reader of those)."""
    if not text:
        return None
    text = text.strip()
    if text.isdigit():
        return float(text)
    return pcmk.parse_time(text)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def event(t: float, kind: str, message: str, source: str, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"time": _iso(t), "epoch": t, "kind": kind, "message": message}
    out.update({k: v for k, v in fields.items() if v is not None})
    out["source"] = source
    return out


def fencing_events(history: Iterable[pcmk.FenceEvent]) -> list[dict[str, Any]]:
    """Host fencing from Pacemaker's fencing history (crm_mon)."""
    out = []
    for e in history:
        t = e.completed_at
        if t is None:
            continue
        ok = e.status == "success"
        by = e.delegate or "?"
        msg = (
            f"{e.target} fenced ({e.action}) by {by}"
            if ok
            else f"fencing of {e.target} ({e.action}) {e.status}"
        )
        out.append(
            event(
                t,
                "fence" if ok else "fence-failed",
                msg,
                "fencing-history",
                host=e.target,
                action=e.action,
                status=e.status,
                delegate=e.delegate or None,
            )
        )
    return out


def _expected_rc(op: ET.Element) -> str | None:
    parts = (op.get("transition-key") or "").split(":")
    return parts[2] if len(parts) >= 4 else None


def operation_events(cib: ET.Element, guests: Iterable[str]) -> list[dict[str, Any]]:
    """Starts, stops, migrations and failed operations of the guests, from the CIB's status."""
    wanted = set(guests)
    out = []
    seen: set[tuple[str, str, str, str]] = set()
    for node in cib.iterfind("status/node_state"):
        host = node.get("uname", "?")
        for rsc in node.iterfind("lrm/lrm_resources/lrm_resource"):
            gid = rsc.get("id", "")
            if gid not in wanted:
                continue
            for op in rsc.iterfind("lrm_rsc_op"):
                e = _operation_event(op, gid, host)
                if e is None:
                    continue
                key = (e["kind"], gid, host, e["time"])  # _last_ and _last_failure_ can repeat
                if key not in seen:
                    seen.add(key)
                    out.append(e)
    return out


def _operation_event(op: ET.Element, guest: str, host: str) -> dict[str, Any] | None:
    t = parse_time(op.get("last-rc-change") or op.get("last-run"))
    if t is None:
        return None
    name = op.get("operation", "")
    rc = op.get("rc-code", "")
    expected = _expected_rc(op)
    op_status = op.get("op-status", "0")
    if op_status == "1":  # cancelled (a recurring monitor stopped): nothing happened
        return None
    if op_status == "-1" or rc == "193":  # still running: Pacemaker records it as pending
        if name == "monitor":  # a monitor's first run: no news
            return None
        return event(
            t,
            "pending",
            f"{guest}: {name} in progress on {host}",
            "operation-history",
            guest=guest,
            host=host,
            operation=name,
        )
    with contextlib.suppress(ValueError):  # the time it finished, not the time it began
        t += int(op.get("exec-time", "0")) / 1000
    failed = op_status not in ("0", "") or (expected is not None and rc != expected)
    if failed:
        reason = op.get("exit-reason") or OCF_NAMES.get(rc, f"rc {rc}")
        if op_status == "2":
            reason = "timed out" + (f": {op.get('exit-reason')}" if op.get("exit-reason") else "")
        what = "probe" if name == "monitor" and op.get("interval", "0") == "0" else name
        return event(
            t,
            "failure",
            f"{guest}: {what} failed on {host}: {reason}",
            "operation-history",
            guest=guest,
            host=host,
            operation=name,
            rc=int(rc) if rc.isdigit() else None,
        )
    text = {
        "start": ("start", f"{guest} started on {host}"),
        "stop": ("stop", f"{guest} stopped on {host}"),
        "migrate_from": ("migrate", f"{guest} live-migrated to {host}"),
        "migrate_to": ("migrate-out", f"{guest} live-migrated away from {host}"),
    }.get(name)
    if text is None:
        return None
    return event(t, text[0], text[1], "operation-history", guest=guest, host=host, operation=name)


def audit_events(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Guest-cluster fence requests from the listeners' audit log (one JSON object a line).

    Host-to-host look-ups and status queries change nothing and are left out."""
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        action = rec.get("action")
        result = rec.get("result")
        quiet = action in (None, "status", "list", "monitor", "locate", "local-list", "survey")
        if quiet and result not in ("refused", "denied"):
            continue
        t = parse_time(str(rec.get("time", "")))
        if t is None:
            continue
        plug = rec.get("plug")
        who = rec.get("key") or rec.get("peer") or "?"
        what = f"{action} {plug}" if plug else str(action or "request")
        msg = f"fence request {what} from {who} at {rec.get('listener', '?')}: {result}"
        if rec.get("detail"):
            msg += f" ({rec['detail']})"
        out.append(
            event(
                t,
                "fence-request",
                msg,
                "fence-audit",
                guest=plug,
                host=rec.get("listener"),
                action=action,
                status=result,
            )
        )
    return out


def timeline(*groups: list[dict[str, Any]], limit: int = 50) -> list[dict[str, Any]]:
    """All events, newest first, at most limit."""
    merged = [e for g in groups for e in g]
    merged.sort(key=lambda e: e["epoch"], reverse=True)
    return merged[:limit]


def report(audit_lines: Iterable[str] = (), limit: int = 50) -> dict[str, Any]:
    """The cluster's recent events: the body of `kvmha events --json` (kvmha.events.v1)."""
    from kvmha.guests import guest_primitives

    st = pcmk.cluster_state()
    cib = pcmk.query_cib()
    events = timeline(
        fencing_events(st.fencing),
        operation_events(cib, guest_primitives(cib)),
        audit_events(audit_lines),
        limit=limit,
    )
    return {"now": _iso(time.time()), "events": events}
