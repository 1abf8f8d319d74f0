"""Run a command inside a real lab guest through its QEMU guest agent (guest-exec).

The guest is found on whichever powered host's libvirt runs it. This is how tests and
the lab reach inside real guests: no ssh, no serial console scraping.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from typing import Any

from kvmha.errors import KvmhaError
from kvmha.tools.lab import power
from kvmha.tools.lab.config import LabConfig


class GuestExecError(KvmhaError):
    pass


def _libvirt() -> Any:
    import libvirt

    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    return libvirt


def running_on(cfg: LabConfig, guest: str) -> list[str]:
    """Every powered host whose libvirt has guest active (more than one = a double run)."""
    lv = _libvirt()
    found = []
    for h in cfg.host_names():
        if not power.is_on(cfg, h):
            continue
        try:
            conn = lv.open(cfg.libvirt_uri(h))
        except lv.libvirtError:
            continue
        try:
            if conn.lookupByName(guest).isActive():
                found.append(h)
        except lv.libvirtError:
            pass
        finally:
            conn.close()
    return found


def agent_command(cfg: LabConfig, guest: str, cmd: dict[str, Any], timeout: int = 10) -> Any:
    import importlib

    libvirt_qemu: Any = importlib.import_module("libvirt_qemu")  # python3-libvirt, untyped
    lv = _libvirt()
    # during a live migration two hosts have the domain active, the source running and
    # the destination paused (and then the other way round): only a running copy's agent
    # answers, so look for it again for a while rather than ask a paused one
    deadline = time.monotonic() + max(5, timeout)
    while True:
        hosts = running_on(cfg, guest)
        if not hosts:
            raise GuestExecError(f"{guest} runs nowhere")
        for h in hosts:
            conn = lv.open(cfg.libvirt_uri(h))
            try:
                dom = conn.lookupByName(guest)
                if dom.state()[0] != lv.VIR_DOMAIN_RUNNING:
                    continue
                reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(cmd), timeout, 0)
                return json.loads(reply)["return"]
            except lv.libvirtError as exc:
                raise GuestExecError(f"guest agent of {guest}: {exc.get_error_message()}") from None
            finally:
                conn.close()
        if time.monotonic() > deadline:
            raise GuestExecError(f"{guest} is active on {', '.join(hosts)} but runs on none")
        time.sleep(0.2)


def guest_exec(
    cfg: LabConfig,
    guest: str,
    argv: Sequence[str],
    timeout: float = 60.0,
    stdin: str | None = None,
) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of argv run inside guest."""
    args: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
    if stdin is not None:
        args["input-data"] = base64.b64encode(stdin.encode()).decode()
    per_call = max(1, min(10, int(timeout)))  # a hung guest costs at most this per call
    started = agent_command(
        cfg, guest, {"execute": "guest-exec", "arguments": args}, timeout=per_call
    )
    pid = started["pid"]
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        st = agent_command(
            cfg,
            guest,
            {"execute": "guest-exec-status", "arguments": {"pid": pid}},
            timeout=per_call,
        )
        if st.get("exited"):
            out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
            err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
            return int(st.get("exitcode", -1)), out, err
        if time.monotonic() > deadline:
            raise GuestExecError(f"{' '.join(argv)} in {guest} did not finish in {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
