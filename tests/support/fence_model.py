"""Real listeners (kvmha.fence.listener.Listener, all of its decision code) wired to each
other in-process, for the model-based and exhaustive tests.

Only the transport is replaced: a listener's ``_ask_peer`` calls the other listener's
``dispatch`` directly, as a host identity would, or raises ProtocolError when the
network says that host is silent. The crypto and framing have their own tests
(test_fence_listener, test_fence_fuzz). The world (every host's libvirt) and the host
cluster are the fakes of support.fence_lab; ``truth_active`` is what really runs.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from kvmha.fence import agent as proto
from kvmha.fence.audit import Audit
from kvmha.fence.keys import Key, Scope
from kvmha.fence.listener import ALL, Config, Ctx, Listener
from support.fence_lab import FakeBackend, FakeCluster, World

Json = dict[str, Any]
HOSTS_KEY = Key("@hosts", b"m" * 32)


class Net:
    def __init__(self) -> None:
        self.silent: set[str] = set()  # hosts whose listener does not answer
        self.delay: dict[str, float] = {}  # host -> seconds before it answers
        self.listeners: dict[str, ModelListener] = {}
        self.lock = threading.Lock()

    def ask(self, src: str, dst: str, body: Json) -> Json:
        with self.lock:
            silent = dst in self.silent or src in self.silent
            delay = self.delay.get(dst, 0.0)
        if silent:
            raise proto.ProtocolError(f"cannot connect to {dst}: timed out")
        if delay:
            time.sleep(delay)
        lst = self.listeners[dst]
        ctx = Ctx(f"@hosts:{src}", ALL, "net", True)
        ans = lst.dispatch(ctx, {**body, "from": src, "to": dst})
        return {**ans, "host": dst}


class ModelListener(Listener):
    net: Net

    def _ask_peer(self, host: str, body: Json, timeout: Optional[float] = None) -> Json:
        if host not in self.net.listeners:
            raise proto.ProtocolError(f"no address known for {host}'s listener")
        ans = self.net.ask(self.cfg.host, host, body)
        self._heard_from(host)
        return ans


class Cluster:
    """A host cluster of n hosts running real listeners on a fake world."""

    def __init__(self, tmp: Any, n: int) -> None:
        self.hosts = [f"host{i}" for i in range(1, n + 1)]
        self.world = World()
        self.cluster = FakeCluster(self.world, list(self.hosts))
        self.net = Net()
        quiet = logging.getLogger("kvmha-fence-listener")
        for h in self.hosts:
            d = tmp / h
            (d / "keys").mkdir(parents=True, exist_ok=True)
            peers = {p: ("model", 1) for p in self.hosts}
            cfg = Config(
                host=h,
                keys_dir=str(d / "keys"),
                host_key="",
                audit_log=None,
                state_file=None,
                syslog=False,
                peers=peers,
                survey_interval=3600,
            )
            lst = ModelListener(
                cfg, FakeBackend(self.world, h), self.cluster, Audit(None, h, False), HOSTS_KEY
            )
            lst.net = self.net
            self.net.listeners[h] = lst
        quiet.setLevel(logging.CRITICAL)

    def listener(self, host: str) -> ModelListener:
        return self.net.listeners[host]

    def reset(self) -> None:
        self.world.doms.clear()
        self.world.offs.clear()
        self.world.down.clear()
        self.net.silent.clear()
        self.net.delay.clear()
        c = self.cluster
        c.managed.clear()
        c.offline.clear()
        c.unclean.clear()
        c.fenced.clear()
        c.fenced_at.clear()
        c.roles.clear()
        for lst in self.net.listeners.values():
            with lst._lock:
                lst.sightings.clear()
                lst.heard.clear()
            lst._off_requests.clear()
            lst.started = time.time() - 1000

    def request(self, via: str, key: str, scope: Scope, action: str, plug: str) -> Json:
        ctx = Ctx(key, scope, "10.1.0.1", False)
        return self.listener(via).dispatch(ctx, {"action": action, "plug": plug, "timeout": 5})

    def truth_active(self, plug: str) -> list[tuple[str, str]]:
        """(host, uuid) of every copy that really runs (or is paused) and matches plug."""
        with self.world.lock:
            return [
                (d.host, d.uuid)
                for d in self.world.doms
                if d.active and (d.name == plug or d.uuid.lower() == plug.lower())
            ]

    def close(self) -> None:
        for lst in self.net.listeners.values():
            lst.pool.shutdown(wait=True)
