"""Fakes for the fence listener tests: a world of hosts and domains, a host cluster, and
a set of real listeners on loopback (real sockets, real protocol, fake libvirt).

Shared by tests/unit/test_fence_* (and the model-based tests); it holds no tests itself.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from kvmha.fence import agent
from kvmha.fence.audit import Audit
from kvmha.fence.cluster import ManagedGuest, NodeInfo, Status
from kvmha.fence.keys import Key, Scope, write_private
from kvmha.fence.listener import Config, Listener
from kvmha.fence.virt import BackendError, Info


@dataclasses.dataclass
class Dom:
    name: str
    uuid: str
    host: str
    active: bool = True
    persistent: bool = False
    paused: bool = False


class World:
    """Every host's libvirt, in one place."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.doms: list[Dom] = []
        self.down: set[str] = set()  # hosts whose libvirt fails
        self.offs: list[tuple[str, str]] = []  # (host, name) in order
        self.frozen: list[tuple[str, str]] = []
        self.thawed: list[tuple[str, str]] = []

    def add(self, name: str, host: str, uuid: str = "", **kw: Any) -> Dom:
        d = Dom(
            name, uuid or f"00000000-0000-4000-8000-{abs(hash(name)) % 10**12:012d}", host, **kw
        )
        self.doms.append(d)
        return d

    def find(self, host: str, plug: str) -> Optional[Dom]:
        for d in self.doms:
            if d.host == host and (d.name == plug or d.uuid.lower() == plug.lower()):
                return d
        return None


class FakeBackend:
    def __init__(self, world: World, host: str) -> None:
        self.world = world
        self.host = host

    def _check(self) -> None:
        if self.host in self.world.down:
            raise BackendError(f"libvirt on {self.host} is down")

    @staticmethod
    def _info(d: Dom) -> Info:
        state = ("paused" if d.paused else "running") if d.active else "shutoff"
        return {
            "name": d.name,
            "uuid": d.uuid,
            "state": state,
            "active": d.active,
            "persistent": d.persistent,
        }

    def info(self, plug: str) -> Optional[Info]:
        self._check()
        with self.world.lock:
            d = self.world.find(self.host, plug)
            return self._info(d) if d else None

    def domains(self) -> list[Info]:
        self._check()
        with self.world.lock:
            return [self._info(d) for d in self.world.doms if d.host == self.host]

    def off(self, plug: str, timeout: float) -> Info:
        self._check()
        with self.world.lock:
            d = self.world.find(self.host, plug)
            if d is None or not d.active:
                return {"state": "off", "already": True}
            d.paused = True
            d.active = False
            d.paused = False
            self.world.offs.append((self.host, d.name))
            if not d.persistent:
                self.world.doms.remove(d)
        return {"state": "off", "already": False, "frozen_s": 0.001, "off_s": 0.002}

    def start(self, plug: str, timeout: float) -> Info:
        self._check()
        with self.world.lock:
            d = self.world.find(self.host, plug)
            if d is None:
                raise BackendError(f"no definition of {plug}")
            already = d.active
            d.active = True
            return {"state": "on", "already": already}

    def freeze(self, plug: str) -> Optional[float]:
        self._check()
        with self.world.lock:
            d = self.world.find(self.host, plug)
            if d is None or not d.active or d.paused:
                return None
            d.paused = True
            self.world.frozen.append((self.host, d.name))
            return 0.001

    def thaw(self, plug: str) -> None:
        self._check()
        with self.world.lock:
            d = self.world.find(self.host, plug)
            if d is not None and d.active and d.paused:
                d.paused = False
                self.world.thawed.append((self.host, d.name))


class FakeCluster:
    def __init__(self, world: World, hosts: list[str]) -> None:
        self.world = world
        self.host_names = hosts
        self.managed: dict[str, ManagedGuest] = {}
        self.roles: list[tuple[str, str]] = []
        self.offline: set[str] = set()
        self.unclean: set[str] = set()
        self.fenced: set[str] = set()  # fenced just now (see fence())
        self.fenced_at: dict[str, float] = {}
        self.extra_hosts: dict[str, str] = {}  # nodes the cluster knows beyond the listeners

    def fence(self, host: str, at: Optional[float] = None) -> None:
        """The host cluster fenced host (at: Unix time, default now + 2 s, safely after
        anything seen so far): it is offline and clean."""
        self.offline.add(host)
        self.unclean.discard(host)
        self.fenced.add(host)
        self.fenced_at[host] = float(int(time.time() + 2 if at is None else at))

    def manage(
        self, name: str, tags: frozenset[str] = frozenset(), dc: Optional[str] = None
    ) -> None:
        uuid = next((d.uuid for d in self.world.doms if d.name == name), "")
        self.managed[name] = ManagedGuest(name, name, uuid, tags, dc)

    def guests(self) -> dict[str, ManagedGuest]:
        return dict(self.managed)

    def status(self) -> Optional[Status]:
        nodes = {
            h: NodeInfo(h not in self.offline, h in self.unclean)
            for h in [*self.host_names, *self.extra_hosts]
        }
        placement: dict[str, tuple[str, ...]] = {}
        with self.world.lock:
            for d in self.world.doms:
                g = self.managed.get(d.name)
                if d.active and g is not None and (not g.uuid or g.uuid == d.uuid):
                    placement[d.name] = (*placement.get(d.name, ()), d.host)
        return Status(nodes, placement, frozenset(self.fenced), dict(self.fenced_at))

    def hosts(self) -> dict[str, str]:
        return {**{h: "" for h in self.host_names}, **self.extra_hosts}

    def set_target_role(self, rid: str, role: str) -> None:
        self.roles.append((rid, role))
        if role == "Started":
            with self.world.lock:
                if not any(d.name == rid and d.active for d in self.world.doms):
                    host = next(h for h in self.host_names if h not in self.offline)
                    self.world.doms.append(Dom(rid, self.managed[rid].uuid, host))


HOST_KEY = Key("@hosts", b"h" * 32)


@dataclasses.dataclass
class Lab:
    """Three real listeners on loopback sharing a fake world."""

    tmp: Path
    world: World
    cluster: FakeCluster
    listeners: dict[str, Listener]
    ports: dict[str, int]
    threads: list[threading.Thread]

    def audit_lines(self, host: str) -> list[dict[str, Any]]:
        path = self.tmp / host / "audit.log"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def all_audit(self) -> list[dict[str, Any]]:
        return [e for h in self.listeners for e in self.audit_lines(h)]

    def add_key(self, name: str, scope: Scope, secret: bytes = b"") -> Path:
        secret = secret or os.urandom(32)
        for host in self.listeners:
            self.listeners[host].keys.install(name, secret, scope)
        guest = self.tmp / f"{name}.guest.key"
        write_private(guest, agent.key_text(name, secret))
        return guest

    def stop_host(self, host: str) -> None:
        self.listeners[host].shutdown()
        self.threads[list(self.listeners).index(host)].join(5)


def start_lab(
    tmp: Path, hosts: tuple[str, ...] = ("host1", "host2", "host3"), **cfg_kw: Any
) -> Lab:
    world = World()
    cluster = FakeCluster(world, list(hosts))
    listeners: dict[str, Listener] = {}
    ports: dict[str, int] = {}
    threads = []
    peers: dict[str, tuple[str, int]] = {}
    for h in hosts:
        d = tmp / h
        (d / "keys").mkdir(parents=True)
        cfg = Config(
            host=h,
            listen="127.0.0.1",
            port=0,
            keys_dir=str(d / "keys"),
            host_key="",
            audit_log=str(d / "audit.log"),
            state_file=str(d / "state.json"),
            syslog=False,
            peers=peers,  # shared: filled below, once every port is known
            survey_interval=3600,
            **cfg_kw,
        )
        lst = Listener(
            cfg, FakeBackend(world, h), cluster, Audit(cfg.audit_log, h, False), HOST_KEY
        )
        ready = threading.Event()

        def on_ready(port: int, h: str = h, ready: threading.Event = ready) -> None:
            ports[h] = port
            ready.set()

        t = threading.Thread(target=lst.serve, kwargs={"ready": on_ready}, daemon=True)
        t.start()
        assert ready.wait(5)
        listeners[h] = lst
        threads.append(t)
    for h in hosts:
        peers[h] = ("127.0.0.1", ports[h])
    return Lab(tmp, world, cluster, listeners, ports, threads)


def stop_lab(lab: Lab) -> None:
    stoppers = [threading.Thread(target=lst.shutdown) for lst in lab.listeners.values()]
    for t in stoppers:
        t.start()
    for t in stoppers + lab.threads:
        t.join(5)


def lab_fixture(tmp: Path) -> Iterator[Lab]:
    lab = start_lab(tmp)
    try:
        yield lab
    finally:
        stop_lab(lab)


def run_agent(argv: Optional[list[str]] = None, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = agent.main(argv if argv is not None else [], io.StringIO(stdin), out, err)
    return rc, out.getvalue(), err.getvalue()


def agent_args(
    lab: Lab,
    key: Path,
    action: str,
    plug: str = "",
    hosts: Optional[list[str]] = None,
    extra: Optional[list[str]] = None,
) -> list[str]:
    hosts = hosts or list(lab.listeners)
    # every listener on its own port: the agent has one port, so use the first's and
    # rely on the listeners' own addresses for the rest (see addr_for)
    argv = [
        "-o",
        action,
        "-k",
        str(key),
        "-a",
        ",".join(f"127.0.0.1:{lab.ports[h]}" for h in hosts),
    ]
    if plug:
        argv += ["-n", plug]
    return argv + (extra or [])


def wait_until(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False
