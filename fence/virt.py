"""The listener's hands on its own host: local libvirt, through its public API only
(connection, state names and error text from kvmha.virt, the one libvirt module).

``off`` pauses the domain first (its vCPUs stop within milliseconds: the guest is
frozen and can no longer write anything), then destroys it through libvirt and polls
until libvirt itself reports it off. QEMU is never killed behind libvirt's back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Optional, Protocol

from kvmha import virt as kvirt
from kvmha.fence.rule import looks_like_uuid

Info = dict[str, Any]


class BackendError(Exception):
    pass


class Backend(Protocol):
    def info(self, plug: str) -> Optional[Info]: ...

    def domains(self) -> list[Info]: ...

    def off(self, plug: str, timeout: float) -> Info: ...

    def start(self, plug: str, timeout: float) -> Info: ...

    def freeze(self, plug: str) -> Optional[float]: ...

    def thaw(self, plug: str) -> None: ...


# How long off() waits for the pause before it destroys anyway. A pause needs libvirt's
# job lock: while another job holds it (the host cluster's graceful stop of a hung guest,
# a migration) suspend() waits up to libvirt's 30 s job timeout. destroy() does not wait:
# libvirt kills QEMU first and takes the job afterwards, so it must not queue behind it.
SUSPEND_WAIT_S = 0.5


class LibvirtBackend:
    """One libvirt connection shared by all threads (libvirt-python is thread-safe)."""

    def __init__(self, uri: str, connect_timeout: float = 10.0) -> None:
        try:  # through kvmha.virt, the one libvirt module (no stderr error lines)
            self.libvirt = kvirt.load_libvirt()
        except kvirt.LibvirtUnavailable as exc:
            raise BackendError(str(exc)) from exc
        self.uri = uri
        self.connect_timeout = connect_timeout
        self._conn: Any = None
        self._lock = threading.Lock()

    def conn(self) -> Any:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except self.libvirt.libvirtError:
                    pass
                with contextlib.suppress(self.libvirt.libvirtError):
                    self._conn.close()
                self._conn = None
            try:
                self._conn = kvirt.connect(self.uri, self.connect_timeout)
            except (self.libvirt.libvirtError, kvirt.ConnectTimeout) as exc:
                why = kvirt.err_text(exc)
                raise BackendError(f"cannot connect to libvirt at {self.uri}: {why}") from exc
            return self._conn

    def _lookup(self, plug: str) -> Any:
        conn = self.conn()
        lv = self.libvirt
        try:
            if looks_like_uuid(plug):
                try:
                    return conn.lookupByUUIDString(plug)
                except lv.libvirtError as exc:
                    if kvirt.err_code(exc) != kvirt.VIR_ERR_NO_DOMAIN:
                        raise
            return conn.lookupByName(plug)
        except lv.libvirtError as exc:
            if kvirt.err_code(exc) == kvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise BackendError(f"libvirt: {kvirt.err_text(exc)}") from exc

    def _info(self, dom: Any) -> Info:
        lv = self.libvirt
        try:
            state = dom.state()[0]
            return {
                "name": dom.name(),
                "uuid": dom.UUIDString(),
                "state": kvirt.state_name(state),
                "active": bool(dom.isActive()),
                "persistent": bool(dom.isPersistent()),
            }
        except lv.libvirtError as exc:
            if kvirt.err_code(exc) == kvirt.VIR_ERR_NO_DOMAIN:
                return {"name": dom.name(), "uuid": "", "state": "gone", "active": False}
            raise BackendError(f"libvirt: {kvirt.err_text(exc)}") from exc

    def info(self, plug: str) -> Optional[Info]:
        dom = self._lookup(plug)
        if dom is None:
            return None
        info = self._info(dom)
        return None if info["state"] == "gone" else info

    def domains(self) -> list[Info]:
        try:
            doms = self.conn().listAllDomains(0)
        except self.libvirt.libvirtError as exc:
            raise BackendError(f"libvirt: {kvirt.err_text(exc)}") from exc
        out = []
        for d in doms:
            info = self._info(d)
            if info["state"] != "gone":
                out.append(info)
        return out

    def _active(self, dom: Any) -> bool:
        try:
            return bool(dom.isActive())
        except self.libvirt.libvirtError as exc:
            if kvirt.err_code(exc) == kvirt.VIR_ERR_NO_DOMAIN:
                return False  # a transient domain is gone once it is off
            raise

    def off(self, plug: str, timeout: float) -> Info:
        t0 = time.monotonic()
        dom = self._lookup(plug)
        if dom is None or not self._active(dom):
            return {"state": "off", "already": True}
        lv = self.libvirt
        frozen = None
        try:
            if dom.state()[0] == kvirt.RUNNING:
                kvirt.call_with_deadline(dom.suspend, SUSPEND_WAIT_S)
                frozen = time.monotonic() - t0
        except TimeoutError:
            pass  # the pause waits for another job's lock: destroy does not
        except lv.libvirtError:
            pass  # paused already, or migrating: destroy anyway
        deadline = t0 + max(timeout, 1.0)
        err = None
        while time.monotonic() < deadline:
            try:
                if not self._active(dom):
                    break
                dom.destroy()
            except lv.libvirtError as exc:
                err = exc
                if kvirt.err_code(exc) == kvirt.VIR_ERR_NO_DOMAIN:
                    break
                time.sleep(0.05)
                continue
            if not self._active(dom):
                break
            time.sleep(0.02)
        try:
            still = self._active(dom)
        except lv.libvirtError as exc:
            raise BackendError(f"cannot confirm {plug} is off: {exc}") from exc
        if still:
            raise BackendError(f"{plug} is still running after {timeout:.0f} s ({err})")
        return {
            "state": "off",
            "already": False,
            "frozen_s": frozen,
            "off_s": time.monotonic() - t0,
        }

    def start(self, plug: str, timeout: float) -> Info:
        dom = self._lookup(plug)
        if dom is None:
            raise BackendError(f"no definition of {plug} on this host")
        if self._active(dom):
            return {"state": "on", "already": True}
        if not dom.isPersistent():
            raise BackendError(f"{plug} is a transient domain: nothing to start it from")
        try:
            dom.create()
        except self.libvirt.libvirtError as exc:
            raise BackendError(f"cannot start {plug}: {exc}") from exc
        return {"state": "on", "already": False}

    def freeze(self, plug: str) -> Optional[float]:
        """Pause a running domain (its vCPUs stop: it can write nothing more); the seconds
        it took, or None when it was not running (not paused by this call)."""
        t0 = time.monotonic()
        dom = self._lookup(plug)
        if dom is None:
            return None
        try:
            if dom.state()[0] != kvirt.RUNNING:
                return None
            dom.suspend()
        except self.libvirt.libvirtError as exc:
            raise BackendError(f"cannot pause {plug}: {exc}") from exc
        return time.monotonic() - t0

    def thaw(self, plug: str) -> None:
        """Resume a domain freeze() paused (a refused off must not leave it paused)."""
        dom = self._lookup(plug)
        if dom is None:
            return
        try:
            if dom.state()[0] == kvirt.PAUSED:
                dom.resume()
        except self.libvirt.libvirtError as exc:
            raise BackendError(f"cannot resume {plug}: {exc}") from exc
