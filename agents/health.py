"""Guest health checks for the deep monitor (OCF_CHECK_LEVEL >= 10).

Each check returns None when healthy or a one-line reason when not; each is bounded by
its own timeout.  Imported only by deep monitors, so its imports do not slow the plain
monitor down."""

from __future__ import annotations

import json
import socket
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List


def tcp(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"TCP {host}:{port} does not accept connections ({e.strerror or e})"


def http(url: str, expect_status: int, timeout: float) -> str | None:
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    try:
        conn = cls(u.hostname or "", u.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"User-Agent": "kvmha-Guest-health"})
            status = conn.getresponse().status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as e:
        return f"HTTP GET {url} failed ({e})"
    if status != expect_status:
        return f"HTTP GET {url} returned {status}, expected {expect_status}"
    return None


def _agent(dom: Any, cmd: dict[str, Any], timeout: float) -> Any:
    import importlib

    libvirt_qemu: Any = importlib.import_module("libvirt_qemu")  # python3-libvirt, untyped
    reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(cmd), max(1, int(timeout)), 0)
    return json.loads(reply).get("return")


def agent_ping(dom: Any, timeout: float) -> str | None:
    try:
        _agent(dom, {"execute": "guest-ping"}, timeout)
    except Exception as e:  # libvirtError, bad JSON
        return f"QEMU guest agent does not answer guest-ping ({_msg(e)})"
    return None


def agent_exec(dom: Any, argv: List[str], expect_status: int, timeout: float) -> str | None:
    """Run argv in the guest (guest-exec), poll guest-exec-status until it exits."""
    deadline = time.monotonic() + timeout
    try:
        ret = _agent(
            dom,
            {
                "execute": "guest-exec",
                "arguments": {"path": argv[0], "arg": argv[1:], "capture-output": True},
            },
            timeout,
        )
        pid = ret["pid"]
        delay = 0.02
        while True:
            st = _agent(
                dom,
                {"execute": "guest-exec-status", "arguments": {"pid": pid}},
                max(1.0, deadline - time.monotonic()),
            )
            if st.get("exited"):
                break
            if time.monotonic() + delay > deadline:
                killed = _kill_in_guest(dom, pid)
                return (
                    f"health_command {' '.join(argv)!r} did not finish in {timeout:g}s"
                    f" ({killed})"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    except Exception as e:
        return f"health_command {' '.join(argv)!r} could not run in the guest ({_msg(e)})"
    code = st.get("exitcode", -1 if "signal" in st else 0)
    if code != expect_status:
        detail = f"signal {st['signal']}" if "signal" in st else f"exit status {code}"
        return (
            f"health_command {' '.join(argv)!r} ended with {detail}, expected "
            f"{expect_status}{_output(st)}"
        )
    return None


def _kill_in_guest(dom: Any, pid: int) -> str:
    """End a guest-exec command that outlived its timeout, so health checks do not pile up
    in the guest: the guest agent has no kill command, so it runs kill -KILL <pid> there
    (found on the guest's PATH)."""
    try:
        _agent(
            dom,
            {"execute": "guest-exec", "arguments": {"path": "kill", "arg": ["-KILL", str(pid)]}},
            2.0,
        )
    except Exception as e:
        return f"could not kill guest pid {pid}: {_msg(e)}"
    return f"killed in the guest, pid {pid}"


def _output(st: dict[str, Any]) -> str:
    import base64

    for key in ("err-data", "out-data"):
        if st.get(key):
            text = base64.b64decode(st[key]).decode("utf-8", "replace").strip()
            if text:
                return f": {text[-200:]}"
    return ""


def _msg(e: BaseException) -> str:
    get = getattr(e, "get_error_message", None)
    return str(get() if get else e)
