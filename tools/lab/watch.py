"""The HA invariant, checked from outside the cluster: every guest runs on one host at
most, asked every second of every powered host's libvirt directly (not of Pacemaker),
through kvmha.virt (a connection bounded by a deadline, libvirt's state names)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from kvmha import virt
from kvmha.tools.lab.lab import Lab

LIBVIRT_TIMEOUT = 5.0


def running_domains(uri: str, timeout: float = LIBVIRT_TIMEOUT) -> set[str] | None:
    """Names of the domains libvirt at uri reports running; None when it does not answer
    in time (a hung or restarting libvirtd)."""
    box: list[set[str] | None] = []

    def ask() -> None:
        try:
            conn = virt.connect(uri, timeout)
            try:
                doms = conn.listAllDomains(virt.load_libvirt().VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                box.append({d.name() for d in doms if d.state()[0] == virt.RUNNING})
            finally:
                conn.close()
        except Exception:
            box.append(None)

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else None


class Watcher:
    """Polls every host's libvirt once a second in a thread; records double runs."""

    def __init__(self, lab: Lab, interval: float = 1.0) -> None:
        self.lab = lab
        self.interval = interval
        self.violations: list[dict[str, Any]] = []
        self.where: dict[str, list[str]] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def snapshot(self) -> dict[str, list[str]]:
        """guest -> hosts whose libvirt runs it (unanswering hosts left out)."""
        cfg = self.lab.cfg
        where: dict[str, list[str]] = {}
        for host in cfg.host_names():
            if not self.lab.powered(host):
                continue
            names = running_domains(cfg.libvirt_uri(host))
            for name in names or ():
                where.setdefault(name, []).append(host)
        return where

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            where = self.snapshot()
            with self._lock:
                self.where = where
                self.samples += 1
                for guest, hosts in where.items():
                    if len(hosts) > 1:
                        self.violations.append(
                            {"t": t, "kind": "double-run", "guest": guest, "hosts": sorted(hosts)}
                        )
            self._stop.wait(max(0.0, self.interval - (time.time() - t)))

    def current(self) -> dict[str, list[str]]:
        """The latest sample: guest -> hosts that run it."""
        with self._lock:
            return dict(self.where)

    def running_once(self, guests: list[str]) -> bool:
        with self._lock:
            return all(len(self.where.get(g, [])) == 1 for g in guests)

    def wait_running_once(self, guests: list[str], timeout: float) -> float | None:
        """Seconds until every guest ran on exactly one host; None after timeout."""
        t0 = time.monotonic()
        seen = self.samples
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(Exception):
                if self.samples > seen and self.running_once(guests):
                    return time.monotonic() - t0
            time.sleep(0.2)
        return None
