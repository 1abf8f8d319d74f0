"""kvmha-fence-listener: the host side of fence_kvmha; one runs on every host.

Any listener serves any request: it authenticates the guest cluster's key, checks the
key's scope, finds the hosts whose libvirt runs the target (it asks its own libvirt and
the peer listeners, authenticated with the hosts' key), tells the host cluster to keep a
managed guest stopped, and has the owning host pause, destroy and confirm the domain
off. A domain no host knows is never reported off, unless the host it last ran on is
recorded as fenced by the host cluster.

Configuration: ``/etc/kvmha/fence/listener.conf`` (INI)::

    [listener]
    host = host1                       # this host's node name in the host cluster
    listen = 0.0.0.0
    port = 1230
    libvirt_uri = qemu:///system
    keys_dir = /etc/kvmha/fence/keys   # guest-cluster keys, NAME.key, 0600
    host_key = /etc/kvmha/fence/hosts.key
    audit_log = /var/log/kvmha/fence-audit.log
    state_file = /var/lib/kvmha/fence-last-seen.json
    [peers]
    host1 = 10.0.0.11
    host2 = 10.0.0.12:1230
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import configparser
import contextlib
import dataclasses
import difflib
import hmac
import json
import math
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional

from kvmha.endpoint import split_host_port
from kvmha.errors import KvmhaError
from kvmha.fence import agent as proto
from kvmha.fence import rule
from kvmha.fence.audit import Audit, RefusalLog
from kvmha.fence.cluster import HostCluster, ManagedGuest, PacemakerCluster, Status, find_guest
from kvmha.fence.keys import (
    HOST_KEY_PREFIX,
    Key,
    KeyFileError,
    KeyStore,
    Scope,
    Target,
    load_host_key,
    pacemaker_cib,
)
from kvmha.fence.virt import Backend, BackendError, Info
from kvmha.journal import sd_notify

DEFAULT_CONFIG = "/etc/kvmha/fence/listener.conf"
GUEST_ACTIONS = ("on", "off", "reboot", "status", "list", "monitor")
HOST_ACTIONS = ("locate", "local-off", "local-on", "local-list")  # a host's own identity
ADMIN_ACTIONS = ("install-key", "keys")  # the hosts' shared key (kvmha fence) or a host
HOST_KEY_LABEL = b"kvmha-host/1:"
STATE_VERSION = 2
OFF_ROUNDS = 4  # power off, survey again: until no copy is active (a migration ending)
MAX_PLUG = 256
# libvirt domain names as kvmha and virt-install make them, or a UUID (with or without dashes)
PLUG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+:@-]{0,255}\Z")
MAX_TIMEOUT = 300.0
REPLAY_MEMORY = 100_000
ALL = Scope("all", ())
Json = dict[str, Any]


def finite(value: object) -> Optional[float]:
    """value as a float if it is a finite JSON number (not a bool, NaN or infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclasses.dataclass
class Config:
    host: str
    listen: str = "0.0.0.0"  # noqa: S104 (the listener serves the guests' network)
    port: int = proto.DEFAULT_PORT
    libvirt_uri: str = "qemu:///system"
    keys_dir: str = "/etc/kvmha/fence/keys"
    host_key: str = "/etc/kvmha/fence/hosts.key"
    audit_log: Optional[str] = "/var/log/kvmha/fence-audit.log"
    state_file: Optional[str] = "/var/lib/kvmha/fence-last-seen.json"
    syslog: bool = True
    use_cluster: bool = True
    peers: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    max_connections: int = 256  # clients that have not authenticated (yet)
    max_per_source: int = 16  # of those, from one address
    peer_slots: int = 64  # reserved for authenticated exchanges: a flood cannot take them
    handshake_timeout: float = 5.0  # whole hello..request exchange
    frame_timeout: float = 2.0  # each frame of a client not yet authenticated
    peer_timeout: float = 3.0
    survey_interval: float = 10.0

    @classmethod
    def load(cls, path: str) -> Config:
        """Read listener.conf; ConfigError (with the line and the fix) on any mistake."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {path}: {exc.strerror}",
                "create it (kvmha fence setup writes it) or pass --config",
            ) from exc
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, path: str = "listener.conf") -> Config:
        cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#",))
        cp.optionxform = str  # type: ignore[assignment,method-assign]  # host names keep case
        try:
            cp.read_string(text, path)
        except configparser.Error as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"{path}: {first}", FIX_SYNTAX) from exc
        for section in cp.sections():
            if section not in ("listener", "peers"):
                raise ConfigError(
                    f"{path}:{_line_of(text, section, None)}: unknown section [{section}]",
                    "the sections are [listener] and [peers]",
                )
        sec = cp["listener"] if cp.has_section("listener") else cp["DEFAULT"]
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "peers"}
        for name in sec:
            if name not in known:
                near = difflib.get_close_matches(name, known, 1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise ConfigError(
                    f"{path}:{_line_of(text, 'listener', name)}: unknown setting {name!r}",
                    f"{hint}the settings are: {', '.join(known)}",
                )
        cfg = cls(host=sec.get("host", socket.gethostname().split(".")[0]))
        for fld in known.values():
            if fld.name not in sec:
                continue
            raw = sec.get(fld.name, "").strip()
            where = f"{path}:{_line_of(text, 'listener', fld.name)}"
            try:
                setattr(cfg, fld.name, _config_value(fld.name, raw))
            except ValueError as exc:
                raise ConfigError(
                    f"{where}: {fld.name} = {raw!r}: {exc}", FIELD_FIX[fld.name]
                ) from exc
        if not cfg.host or not HOST_NAME_RE.match(cfg.host):
            raise ConfigError(f"{path}: host = {cfg.host!r} is not a node name", FIELD_FIX["host"])
        if cp.has_section("peers"):
            for name, addr in cp["peers"].items():
                try:
                    if not HOST_NAME_RE.match(name):
                        raise ValueError("not a node name")
                    hp = split_host_port(addr, cfg.port)
                    if hp is None:
                        raise ValueError(
                            "not ADDRESS or ADDRESS:PORT (IPv6 with a port: [addr]:port)"
                        )
                    cfg.peers[name] = hp
                except ValueError as exc:
                    raise ConfigError(
                        f"{path}:{_line_of(text, 'peers', name)}: peer {name} = {addr!r}: {exc}",
                        "write NODE = ADDRESS or NODE = ADDRESS:PORT, one per host",
                    ) from exc
        return cfg


class ConfigError(KvmhaError):
    """listener.conf cannot be used: the message names the line, the fix what to write."""


FIX_SYNTAX = "write INI: [listener] with 'name = value' lines, [peers] with 'node = address'"
HOST_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
INT_FIELDS = {
    "port": (0, 65535),
    "max_connections": (1, 100_000),
    "max_per_source": (1, 100_000),
    "peer_slots": (1, 10_000),
}
FLOAT_FIELDS = {
    "handshake_timeout": (0.1, 600.0),
    "peer_timeout": (0.1, 600.0),
    "survey_interval": (0.5, 86400.0),
    "frame_timeout": (0.1, 600.0),
}
BOOL_FIELDS = ("syslog", "use_cluster")
BOOLS = {
    "1": True,
    "yes": True,
    "true": True,
    "on": True,
    "0": False,
    "no": False,
    "false": False,
    "off": False,
}
FIELD_FIX = {
    "host": "host = this host's node name in the host cluster (crm_node -n)",
    "listen": "listen = an IP address of this host (0.0.0.0 for all)",
    "port": "port = a TCP port, 1-65535 (0: any free port, for tests)",
    "libvirt_uri": "libvirt_uri = qemu:///system",
    "keys_dir": "keys_dir = a directory of NAME.key files",
    "host_key": "host_key = the hosts' key file",
    "audit_log": "audit_log = a file path (empty: no file)",
    "state_file": "state_file = a file path (empty: none)",
    "syslog": "syslog = yes or no",
    "use_cluster": "use_cluster = yes or no",
    **{k: f"{k} = a whole number from {lo} to {hi}" for k, (lo, hi) in INT_FIELDS.items()},
    **{k: f"{k} = seconds, from {lo} to {hi}" for k, (lo, hi) in FLOAT_FIELDS.items()},
}


def _config_value(name: str, raw: str) -> Any:
    if name in INT_FIELDS:
        lo, hi = INT_FIELDS[name]
        if not re.fullmatch(r"[0-9]{1,7}", raw) or not lo <= int(raw) <= hi:
            raise ValueError(f"not a whole number from {lo} to {hi}")
        return int(raw)
    if name in FLOAT_FIELDS:
        lo_f, hi_f = FLOAT_FIELDS[name]
        if not re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,6})?", raw) or not lo_f <= float(raw) <= hi_f:
            raise ValueError(f"not a number of seconds from {lo_f} to {hi_f}")
        return float(raw)
    if name in BOOL_FIELDS:
        if raw.lower() not in BOOLS:
            raise ValueError("not yes or no")
        return BOOLS[raw.lower()]
    if name == "host":
        return raw
    return raw or None


def _line_of(text: str, section: str, key: Optional[str]) -> int:
    """The line number of key in [section] (of the section header when key is None)."""
    current = ""
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("[") and "]" in s:
            current = s[1 : s.index("]")].strip()
            if key is None and current == section:
                return n
            continue
        if (
            key is not None
            and current in (section, "")
            and re.match(re.escape(key) + r"\s*[=:]", s)
        ):
            return n
    return 0


def config_text(cfg: Config) -> str:
    lines = ["# kvmha-fence-listener configuration", "[listener]"]
    for f in dataclasses.fields(cfg):
        if f.name == "peers":
            continue
        v = getattr(cfg, f.name)
        if isinstance(v, bool):
            v = "yes" if v else "no"
        lines.append(f"{f.name} = {'' if v is None else v}")
    lines.append("[peers]")
    for name, (host, port) in sorted(cfg.peers.items()):
        lines.append(f"{name} = [{host}]:{port}" if ":" in host else f"{name} = {host}:{port}")
    return "\n".join(lines) + "\n"


class Refusal(Exception):
    """Refuse the exchange (unauthenticated): logged, and the connection closed.

    code is a stable problem code (tests and log readers match it, see PROBLEMS);
    reason the text sent to the client, detail what only the audit log gets.
    """

    def __init__(self, code: str, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.detail = detail


# Stable problem codes: in every refusal frame and error answer ("code"), and the audit log.
PROBLEMS = {
    "busy": "too many connections (in all, or from this address)",
    "bad-frame": "not a kvmha-fence/1 frame (size, JSON, nesting, deadline)",
    "bad-hello": "the first frame is not a kvmha-fence/1 hello with a valid key name and nonce",
    "bad-request": "the second frame is not a request",
    "bad-auth": "unknown key or wrong MAC (one answer for both: no oracle for key names)",
    "replayed": "a request MAC seen before",
    "internal-error": "a bug: the listener's log has the traceback",
    "unknown-action": "an action this key may not ask for",
    "bad-plug": "a plug that is neither a libvirt domain name nor a UUID",
    "bad-number": "a timeout that is not a finite number",
    "no-plug": "the action needs a plug",
    "out-of-scope": "the key may not act on this domain",
    "unknown-domain": "no host knows the domain, and nothing proves it off",
    "ambiguous-name": "the name belongs to domains with different UUIDs: name the UUID",
    "host-unconfirmed": "a host could not be asked and is not recorded as fenced since",
    "managed-active": "the host cluster still shows the managed guest active",
    "libvirt-error": "libvirt failed on the host that owns the domain",
    "cluster-error": "the host cluster could not be asked or changed",
    "off-failed": "a host could not confirm the domain off",
    "on-failed": "the domain could not be started",
    "key-install-failed": "a key could not be installed",
}


def problem(code: str, message: str, status: str = "error", **extra: Any) -> Json:
    """An error answer with its stable problem code."""
    assert code in PROBLEMS, code
    return {"status": status, "code": code, "message": message, **extra}


@dataclasses.dataclass
class Ctx:
    key: str
    scope: Scope
    peer: str
    is_host: bool  # another host's listener (its own identity key): host actions allowed
    origin: Optional[Json] = None
    admin: bool = False  # the hosts' shared key (kvmha fence on a host): admin actions
    request: str = ""  # this request's id, carried to the hosts that act on it
    at: float = 0.0  # when a guest's request arrived (Unix time): what "a later off" means


INTERNAL = Ctx("", ALL, "", True)


def host_secret(hosts_secret: bytes, host: str) -> bytes:
    """host's own key, derived from the hosts' secret: it covers only exchanges that name
    host as requester (its requests) or responder (its answers)."""
    return hmac.new(hosts_secret, HOST_KEY_LABEL + host.encode(), "sha256").digest()


def wrap_secret(host_secret: bytes, nonce: bytes, data: bytes) -> bytes:
    """XOR with an HMAC-SHA256 keystream (the exchange's MAC covers integrity)."""
    stream = b""
    counter = 0
    while len(stream) < len(data):
        block = proto.transcript(b"wrap", nonce, counter.to_bytes(4, "big"))
        stream += hmac.new(host_secret, block, "sha256").digest()
        counter += 1
    return bytes(a ^ b for a, b in zip(data, stream))


def _copy(host: str, info: Info) -> rule.Copy:
    return rule.Copy(
        host,
        str(info.get("name", "")),
        str(info.get("uuid", "")),
        bool(info.get("active")),
        str(info.get("state", "")),
    )


class Listener:
    def __init__(
        self,
        cfg: Config,
        backend: Backend,
        cluster: Optional[HostCluster],
        audit: Audit,
        host_key: Optional[Key] = None,
    ) -> None:
        self.cfg = cfg
        self.backend = backend
        self.cluster = cluster
        self.audit = audit
        self.host_key = host_key or load_host_key(cfg.host_key)
        self.my_secret = host_secret(self.host_key.secret, cfg.host)
        self.my_key = Key(f"{self.host_key.name}:{cfg.host}", self.my_secret)
        self.keys = KeyStore(  # file keys, and the CIB's keys (install: kvmha fence key)
            cfg.keys_dir,
            audit.warning,
            self.host_key.secret,
            pacemaker_cib if cluster is not None else None,
        )
        self.keys.reload(force=True)
        self.started = time.time()
        self._addr_cache: tuple[float, frozenset[str]] = (-1e9, frozenset())
        self._lock = threading.Lock()
        self._onoff = threading.RLock()  # off requests vs a reboot's power-on
        self._active = 0
        self._peers_active = 0
        self._per_source: dict[str, int] = collections.Counter()
        self._macs: set[bytes] = set()
        self._mac_order: collections.deque[bytes] = collections.deque()
        self._domain_locks: dict[str, threading.Lock] = {}
        self._off_requests: dict[str, tuple[float, str]] = {}  # name/uuid -> (time, request)
        self.refusals = RefusalLog(audit)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=64)
        self.sightings: dict[str, dict[str, Any]] = {}  # uuid -> {"name", "hosts": {h: t}}
        self.heard: dict[str, float] = {}  # host -> when it last answered
        self._load_state()
        self._state_dirty = False
        self._server: Optional[socketserver.ThreadingTCPServer] = None
        self._stop = threading.Event()

    # ---- state: where domains were seen running, when hosts were heard -------
    def _load_state(self) -> None:
        if not self.cfg.state_file:
            return
        try:
            with open(self.cfg.state_file, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            return  # an older format: start from this listener's start time (rule.floor)
        sightings, heard = data.get("sightings"), data.get("heard")
        if isinstance(sightings, dict):
            for uuid, rec in sightings.items():
                if isinstance(rec, dict) and isinstance(rec.get("hosts"), dict):
                    hosts = {
                        str(h): ft for h, t in rec["hosts"].items() if (ft := finite(t)) is not None
                    }
                    self.sightings[str(uuid)] = {"name": str(rec.get("name", "")), "hosts": hosts}
        if isinstance(heard, dict):
            self.heard = {str(h): ft for h, t in heard.items() if (ft := finite(t)) is not None}

    def _save_state(self) -> None:
        if not self.cfg.state_file or not self._state_dirty:
            return
        self._state_dirty = False
        with self._lock:
            data = {"version": STATE_VERSION, "sightings": self.sightings, "heard": self.heard}
            text = json.dumps(data)
        try:
            os.makedirs(os.path.dirname(self.cfg.state_file) or ".", exist_ok=True)
            tmp = self.cfg.state_file + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.cfg.state_file)
        except OSError as exc:
            self.audit.warning(f"cannot save {self.cfg.state_file}: {exc}")

    def _saw(self, host: str, info: Info, now: Optional[float] = None) -> None:
        """Record that host's libvirt just reported info (a sighting when it is active)."""
        if not info.get("active"):
            return
        uuid = rule.norm_uuid(str(info.get("uuid", "")))
        if not uuid:
            return
        t = time.time() if now is None else now
        with self._lock:
            rec = self.sightings.setdefault(uuid, {"name": "", "hosts": {}})
            rec["name"] = str(info.get("name", ""))
            if rec["hosts"].get(host, -1.0) < t:
                rec["hosts"][host] = t
            self._state_dirty = True

    def _heard_from(self, host: str, t: Optional[float] = None) -> None:
        with self._lock:
            t = time.time() if t is None else t
            if self.heard.get(host, -1.0) < t:
                self.heard[host] = t
                self._state_dirty = True

    def _merge(self, seen: Any, heard: Any) -> list[rule.Sighting]:
        """Take a peer's records (sightings of one plug, hosts heard) into ours."""
        out = []
        if isinstance(seen, list):
            for s in seen:
                try:
                    sg = rule.Sighting(
                        str(s["host"]), str(s["name"]), str(s["uuid"]), float(s["time"])
                    )
                except (KeyError, TypeError, ValueError):
                    continue
                if math.isfinite(sg.time):
                    out.append(sg)
        if isinstance(heard, dict):
            for h, t in heard.items():
                if (ft := finite(t)) is not None:
                    self._heard_from(str(h), ft)
        return out

    def _sightings_of(self, plug: str) -> list[rule.Sighting]:
        by_uuid = rule.looks_like_uuid(plug)
        want = rule.norm_uuid(plug) if by_uuid else ""
        with self._lock:
            return [
                rule.Sighting(h, rec["name"], uuid, t)
                for uuid, rec in self.sightings.items()
                if (uuid == want if by_uuid else rec["name"] == plug)
                for h, t in rec["hosts"].items()
            ]

    def _forget(self, host: str, present: set[str]) -> None:
        """host's full domain list just came in: drop its sightings of domains it lacks."""
        with self._lock:
            for uuid, rec in self.sightings.items():
                if uuid not in present and host in rec["hosts"]:
                    del rec["hosts"][host]
                    self._state_dirty = True

    def _domain_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._domain_locks.setdefault(name, threading.Lock())

    # ---- who the hosts are ---------------------------------------------------
    def member_hosts(self) -> dict[str, Optional[tuple[str, int]]]:
        """Every host of the host cluster (its own node list, not only [peers]) with the
        address of its listener, None when no address is known."""
        hosts: dict[str, Optional[tuple[str, int]]] = {self.cfg.host: None}
        hosts.update(self.cfg.peers)
        if self.cluster is not None:
            try:
                known = self.cluster.hosts()
            except KvmhaError as exc:
                self.audit.warning(f"host cluster members: {exc}")
                known = {}
            for name, addr in known.items():
                if name not in hosts:
                    hosts[name] = (addr, self.cfg.port) if addr else None
        return hosts

    def _host_addresses(self) -> set[str]:
        """The other hosts' listener addresses (cached 5 s: every connection asks)."""
        now = time.monotonic()
        at, addrs = self._addr_cache
        if now - at >= 5.0:
            hosts = self.member_hosts()
            addrs = frozenset(
                a[0] for h, a in hosts.items() if a is not None and h != self.cfg.host
            )
            self._addr_cache = (now, addrs)
        return set(addrs)

    # ---- admission -----------------------------------------------------------
    def _admit(self, peer: str, is_peer_address: bool) -> Optional[str]:
        with self._lock:
            if is_peer_address:
                if self._peers_active >= self.cfg.peer_slots:
                    return "too many connections from the hosts"
                self._peers_active += 1
                return None
            if self._active >= self.cfg.max_connections:
                return "too many connections"
            if self._per_source[peer] >= self.cfg.max_per_source:
                return f"too many connections from {peer}"
            self._active += 1
            self._per_source[peer] += 1
            return None

    def _release(self, peer: str, is_peer_address: bool) -> None:
        with self._lock:
            if is_peer_address:
                self._peers_active -= 1
                return
            self._active -= 1
            self._per_source[peer] -= 1
            if self._per_source[peer] <= 0:
                del self._per_source[peer]

    def _remember_mac(self, mac: bytes) -> None:
        with self._lock:
            self._macs.add(mac)
            self._mac_order.append(mac)
            while len(self._mac_order) > REPLAY_MEMORY:
                self._macs.discard(self._mac_order.popleft())

    def _mac_seen(self, mac: bytes) -> bool:
        with self._lock:
            return mac in self._macs

    # ---- one connection ------------------------------------------------------
    def handle(self, sock: socket.socket, peer: str) -> None:
        t0 = time.monotonic()
        from_host = peer in self._host_addresses()
        why = self._admit(peer, from_host)
        if why is not None:
            self._refuse(sock, peer, None, Refusal("busy", why), t0)
            return
        key_name: Optional[str] = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = t0 + self.cfg.handshake_timeout

            def frame_deadline() -> float:  # a client not yet authenticated: short per frame
                return min(deadline, time.monotonic() + self.cfg.frame_timeout)

            hello = proto.read_frame(sock, proto.MAX_REQUEST_FRAME, frame_deadline())
            if hello.get("type") != "hello" or hello.get("proto") != proto.PROTOCOL:
                raise Refusal("bad-hello", "not a kvmha-fence/1 hello")
            name = hello.get("key")
            if not isinstance(name, str) or not proto.KEY_NAME_RE.match(name):
                raise Refusal("bad-hello", "bad key name in hello")
            key_name = name
            try:
                nc = proto.hex_field(hello, "nc", proto.NONCE_BYTES)
            except proto.ProtocolError as exc:
                raise Refusal("bad-hello", str(exc)) from exc
            secret, scope, peer_host, admin = self._key_for(name)
            ns = os.urandom(proto.NONCE_BYTES)
            proto.send_frame(sock, {"type": "challenge", "ns": ns.hex()}, deadline)
            req = proto.read_frame(sock, proto.MAX_REQUEST_FRAME, frame_deadline())
            if req.get("type") != "request" or not isinstance(req.get("body"), dict):
                raise Refusal("bad-request", "not a request")
            try:
                mac = proto.hex_field(req, "mac", 32)
            except proto.ProtocolError as exc:
                raise Refusal("bad-request", str(exc)) from exc
            body: Json = req["body"]
            want = proto.client_mac(secret or b"\0" * 32, name, nc, ns, body)
            if secret is None or not hmac.compare_digest(mac, want):
                if self._mac_seen(mac):
                    raise Refusal("replayed", "replayed request")
                # the same answer for an unknown key and a wrong MAC; the log tells them apart
                raise Refusal(
                    "bad-auth",
                    "authentication failed (unknown key, wrong key or replayed exchange)",
                    "unknown key" if secret is None else "wrong MAC",
                )
            answer_secret = secret
            if peer_host is not None:
                # a host's request names both ends: a relay cannot point it elsewhere
                if body.get("from") != peer_host or body.get("to") != self.cfg.host:
                    raise Refusal(
                        "bad-auth",
                        "authentication failed (unknown key, wrong key or replayed exchange)",
                        f"host exchange from {peer_host} addressed to {body.get('to')!r}",
                    )
                answer_secret = self.my_secret  # only this host can answer in its name
            self._remember_mac(mac)
            ctx = Ctx(name, scope, peer, peer_host is not None, admin=admin)
            answer = self.dispatch(ctx, body)
            if peer_host is not None:
                answer = {**answer, "host": self.cfg.host}
            self._audit(ctx, body, answer, t0)  # before the answer: the log is never behind
            smac = proto.server_mac(answer_secret, name, nc, ns, mac, answer)
            try:
                proto.send_frame(
                    sock,
                    {"type": "response", "body": answer, "mac": smac.hex()},
                    time.monotonic() + 10,
                )
            except proto.ProtocolError as exc:
                self.audit.warning(f"answer to {peer} not delivered: {exc}")
        except Refusal as exc:
            self._refuse(sock, peer, key_name, exc, t0)
        except proto.ProtocolError as exc:
            self._refuse(sock, peer, key_name, Refusal("bad-frame", str(exc)), t0)
        except Exception as exc:  # never let one request take the listener down
            self.audit.warning(f"internal error serving {peer}: {traceback.format_exc()}")
            bug = Refusal("internal-error", f"internal error: {type(exc).__name__}")
            self._refuse(sock, peer, key_name, bug, t0)
        finally:
            self._release(peer, from_host)

    def _key_for(self, name: str) -> tuple[Optional[bytes], Scope, Optional[str], bool]:
        """(secret, scope, the host it names, admin) for a hello's key name."""
        if name == self.host_key.name:
            return self.host_key.secret, ALL, None, True
        prefix = self.host_key.name + ":"
        if name.startswith(prefix):
            host = name[len(prefix) :]
            if host and host != self.cfg.host and host in self.member_hosts():
                return host_secret(self.host_key.secret, host), ALL, host, False
            return None, ALL, None, False
        if name.startswith(HOST_KEY_PREFIX):
            return None, ALL, None, False
        sk = self.keys.get(name)
        if sk is None:
            return None, ALL, None, False
        return sk.key.secret, sk.scope, None, False

    def _refuse(
        self, sock: socket.socket, peer: str, key: Optional[str], why: Refusal, t0: float
    ) -> None:
        self.refusals.add(
            peer=peer,
            key=key,
            code=why.code,
            detail=why.reason + (f" ({why.detail})" if why.detail else ""),
            ms=round((time.monotonic() - t0) * 1000, 1),
        )
        frame = {"type": "refused", "code": why.code, "reason": why.reason}
        with contextlib.suppress(proto.ProtocolError):
            proto.send_frame(sock, frame, time.monotonic() + 1)

    def _audit(self, ctx: Ctx, body: Json, answer: Json, t0: float) -> None:
        action = body.get("action")
        if ctx.is_host and action in ("locate", "local-list") and answer.get("status") == "ok":
            return  # host-to-host look-ups: too many to log, and they change nothing
        status = answer.get("status")
        result = status if status != "ok" else answer.get("state", "ok")
        self.audit.event(
            peer=ctx.peer,
            key=ctx.key,
            action=action,
            plug=body.get("plug"),
            request=ctx.request or None,
            origin=ctx.origin,
            result=result,
            code=answer.get("code"),
            hosts=answer.get("hosts"),
            detail=answer.get("message") or None,
            ms=round((time.monotonic() - t0) * 1000, 1),
        )

    # ---- requests ------------------------------------------------------------
    def dispatch(self, ctx: Ctx, body: Json) -> Json:
        action = body.get("action")
        allowed = (
            GUEST_ACTIONS
            + (HOST_ACTIONS if ctx.is_host else ())
            + (ADMIN_ACTIONS if ctx.admin or ctx.is_host else ())
        )
        if not isinstance(action, str) or action not in allowed:
            return problem("unknown-action", f"unknown action {str(action)[:40]!r}")
        plug = body.get("plug", "")
        if not isinstance(plug, str) or (plug and not PLUG_RE.match(plug)):
            return problem("bad-plug", "bad plug: a libvirt domain name or a UUID is expected")
        timeout = finite(body.get("timeout", 20.0))
        if timeout is None:
            return problem("bad-number", "bad timeout: a finite number of seconds is expected")
        timeout = min(max(timeout, 1.0), MAX_TIMEOUT)
        origin = body.get("origin")
        if ctx.is_host and isinstance(origin, dict):
            ctx.origin = {str(k)[:20]: str(v)[:100] for k, v in list(origin.items())[:5]}
        if not ctx.is_host:
            ctx.request = os.urandom(6).hex()
            ctx.at = time.time()
        if action in ("on", "off", "reboot", "status") and not plug:
            return problem("no-plug", f"{action} needs a plug")
        try:
            handler: Callable[[Ctx, str, float, Json], Json] = getattr(
                self, "do_" + action.replace("-", "_")
            )
            return handler(ctx, plug, timeout, body)
        except BackendError as exc:
            return problem("libvirt-error", str(exc))
        except KvmhaError as exc:
            return problem("cluster-error", f"host cluster: {exc}")

    # host-to-host: this host's libvirt only
    def do_locate(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        rid = body.get("request")
        if body.get("for") == "off" and isinstance(rid, str):
            self._note_off(plug, rid[:40])
        info = self.backend.info(plug)
        if info is not None:
            self._saw(self.cfg.host, info)
            if body.get("for") == "off" and isinstance(rid, str) and info.get("uuid"):
                self._note_off(str(info["uuid"]), rid[:40])
        with self._lock:
            heard = dict(self.heard)
        heard[self.cfg.host] = time.time()
        seen = [dataclasses.asdict(s) for s in self._sightings_of(plug)]
        return {
            "status": "ok",
            "found": info is not None,
            "info": info,
            "seen": seen,
            "heard": heard,
        }

    def do_local_list(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        return {"status": "ok", "domains": self.backend.domains()}

    def do_local_off(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        rid = body.get("request")
        if isinstance(rid, str):
            self._note_off(plug, rid[:40])
        with self._domain_lock(plug):
            res = self.backend.off(plug, timeout)
        return {"status": "ok", **res}

    def do_local_on(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        rid = body.get("request")
        since = finite(body.get("since", 0.0)) or 0.0  # unknown: the safe side (rule.CLOCK_SKEW)
        with self._onoff:
            if isinstance(rid, str) and self._off_since(plug, rid, since):
                return problem("on-failed", f"a later off of {plug} cancelled this power-on")
            res = self.backend.start(plug, timeout)
        return {"status": "ok", **res}

    def do_install_key(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        try:
            name = str(body["name"])
            scope = Scope.parse({k: str(v) for k, v in dict(body["scope"]).items()}, "install-key")
            nonce = bytes.fromhex(str(body["nonce"]))
            secret = wrap_secret(self.host_key.secret, nonce, bytes.fromhex(str(body["wrapped"])))
            path = self.keys.install(name, secret, scope)
        except (KeyError, TypeError, ValueError, KeyFileError, OSError) as exc:
            return problem("key-install-failed", f"cannot install the key: {exc}")
        return {"status": "ok", "message": f"installed {path}"}

    def do_keys(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        keys = [
            {"name": k.key.name, "scope": k.scope.describe(), "path": k.path}
            for k in self.keys.all()
        ]
        return {"status": "ok", "keys": keys, "problems": self.keys.problems()}

    # ---- off requests and a reboot's power-on -------------------------------
    def _note_off(self, plug: str, request: str) -> None:
        """An off of plug was asked (request): a pending reboot's power-on must not run."""
        plug = rule.norm_uuid(plug) if rule.looks_like_uuid(plug) else plug
        with self._onoff:
            self._off_requests[plug] = (time.time(), request)
            if len(self._off_requests) > 10_000:
                oldest = sorted(self._off_requests.items(), key=lambda kv: kv[1][0])[:5000]
                for k, _ in oldest:
                    del self._off_requests[k]

    def _off_since(self, plug: str, request: str, since: float = 0.0) -> bool:
        """Another request than request asked plug off since request began (Unix time
        since; locked). An off noted up to CLOCK_SKEW before since counts as later (the
        safe side: a power-on not done, never one done after an off); since 0 (unknown)
        makes any other request's off count. An off older than that, noted long before
        this reboot began, never cancels it."""
        plug = rule.norm_uuid(plug) if rule.looks_like_uuid(plug) else plug
        rec = self._off_requests.get(plug)
        return rec is not None and rec[1] != request and rec[0] > since - rule.CLOCK_SKEW

    # the guest clusters' actions
    def do_monitor(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        self.backend.domains()  # libvirt answers
        return {"status": "ok", "message": f"listener on {self.cfg.host} is serving"}

    def survey(
        self, plug: str, purpose: str = "", request: str = "", local_first: bool = False
    ) -> rule.Facts:
        """Ask this host's libvirt and every member host's listener about plug."""
        hosts = self.member_hosts()
        answered: dict[str, tuple[rule.Copy, ...]] = {}
        silent: dict[str, str] = {}
        sightings = self._sightings_of(plug)
        status = self.cluster.status() if self.cluster is not None else None
        body: Json = {"action": "locate", "plug": plug}
        if purpose:
            body.update({"for": purpose, "request": request})
        futures = {
            self.pool.submit(self._ask_peer, h, body): h
            for h, addr in hosts.items()
            if h != self.cfg.host and addr is not None
        }
        for h, addr in hosts.items():
            if h != self.cfg.host and addr is None:
                silent[h] = "no address known for its listener"
        try:
            if purpose == "off":
                self._note_off(plug, request)
            info = self.backend.info(plug)
            answered[self.cfg.host] = (_copy(self.cfg.host, info),) if info else ()
            if info is not None:
                self._saw(self.cfg.host, info)
                if purpose == "off" and info.get("uuid"):
                    self._note_off(str(info["uuid"]), request)
                if local_first and info.get("active"):
                    for fut in futures:
                        fut.cancel()
                    return rule.Facts(
                        plug, tuple(hosts), answered, {}, floor=self.started, status=status
                    )
        except BackendError as exc:
            silent[self.cfg.host] = f"its libvirt: {exc}"
        for fut in concurrent.futures.as_completed(futures):
            h = futures[fut]
            try:
                ans = fut.result()
            except proto.ProtocolError as exc:
                silent[h] = str(exc)
                continue
            if ans.get("status") != "ok":
                silent[h] = str(ans.get("message", "error"))[:200]
                continue
            sightings += self._merge(ans.get("seen"), ans.get("heard"))
            info = ans.get("info")
            if ans.get("found") and isinstance(info, dict):
                answered[h] = (_copy(h, info),)
                self._saw(h, info)
            else:
                answered[h] = ()
        with self._lock:
            heard = dict(self.heard)
        return rule.Facts(
            plug,
            tuple(sorted(hosts)),
            answered,
            silent,
            tuple(sightings),
            heard,
            self.started,
            status,
            self.cluster is not None,
        )

    def _ask_peer(self, host: str, body: Json, timeout: Optional[float] = None) -> Json:
        addr = self.member_hosts().get(host)
        if addr is None:
            raise proto.ProtocolError(f"no address known for {host}'s listener")
        t = self.cfg.peer_timeout
        body = {**body, "from": self.cfg.host, "to": host}
        ans = proto.exchange(
            addr[0],
            addr[1],
            self.my_key,
            body,
            t,
            timeout or t + 5,
            answer_secret=host_secret(self.host_key.secret, host),
        )
        if ans.get("host") != host:
            raise proto.ProtocolError(f"the answer for {host} names {ans.get('host')!r}")
        self._heard_from(host)
        return ans

    def _managed(self, f: rule.Facts) -> Optional[ManagedGuest]:
        if self.cluster is None:
            return None
        found = find_guest(self.cluster, f.plug, f.plug if f.by_uuid else "")
        if found is not None and not (
            f.by_uuid and found.uuid and rule.norm_uuid(found.uuid) != rule.norm_uuid(f.plug)
        ):
            return found
        for cs in f.answered.values():
            for c in cs:
                if f.matches(c.name, c.uuid):
                    g = find_guest(self.cluster, c.name, c.uuid)
                    # a guest of the same name but another UUID is another domain
                    if g is not None and (
                        not g.uuid or rule.norm_uuid(g.uuid) == rule.norm_uuid(c.uuid)
                    ):
                        return g
        return None

    @staticmethod
    def _target(ident: rule.Identity, managed: Optional[ManagedGuest]) -> Target:
        if managed is not None:
            return Target(
                ident.name or managed.name,
                ident.uuid or managed.uuid,
                managed.rid,
                managed.tags,
                managed.dc,
            )
        return Target(ident.name, ident.uuid)

    def _decide(
        self, ctx: Ctx, action: str, f: rule.Facts
    ) -> tuple[Optional[rule.Identity], Optional[ManagedGuest], Optional[Json]]:
        """The domain the plug names and whether the key may act on it."""
        managed = self._managed(f)
        ident, prob = rule.identify(f, managed)
        if prob is not None or ident is None:
            return None, managed, prob
        tgt = self._target(ident, managed)
        if not ctx.scope.allows(tgt):
            msg = f"key {ctx.key!r} may not {action} {f.plug!r} (scope {ctx.scope.describe()})"
            return ident, managed, problem("out-of-scope", msg, "denied")
        return ident, managed, None

    def do_status(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        f = self.survey(plug, local_first=True)
        ident, managed, prob = self._decide(ctx, "status", f)
        if prob is not None or ident is None:
            return prob or problem("internal-error", "no identity")
        active = rule.to_power_off(ident)
        if active:
            return {"status": "ok", "state": "on", "hosts": active}
        return rule.judge(f, ident, managed, {}, f.status)

    def _early_freeze(
        self, ctx: Ctx, plug: str
    ) -> Optional[concurrent.futures.Future[Optional[float]]]:
        """Pause the domain at once when this host runs it and the key may fence it.

        Pausing stops its vCPUs (it can write nothing more) and is undone if the request
        is then refused (an ambiguous name); the destroy waits for the decision. The
        scope check uses what this host and the host cluster know of the domain.
        """
        try:
            info = self.backend.info(plug)
        except BackendError:
            return None
        if info is None or not info.get("active"):
            return None
        f = rule.Facts(plug, (self.cfg.host,), {self.cfg.host: (_copy(self.cfg.host, info),)}, {})
        ident, _managed, prob = self._decide(ctx, "off", f)
        if prob is not None or ident is None or not ident.uuid:
            return None
        return self.pool.submit(self.backend.freeze, ident.uuid)

    def _thaw(self, early: Optional[concurrent.futures.Future[Optional[float]]], plug: str) -> None:
        if early is None:
            return
        try:
            froze = early.result(timeout=30)
        except (BackendError, concurrent.futures.TimeoutError):
            return
        if froze is not None:
            try:
                self.backend.thaw(plug)
                self.audit.info(f"resumed {plug}: the off was refused")
            except BackendError as exc:
                self.audit.warning(f"could not resume {plug} after a refused off: {exc}")

    def _power_off(
        self, ctx: Ctx, ident: rule.Identity, hosts: list[str], timeout: float
    ) -> dict[str, Optional[str]]:
        """Power off and confirm the copy on each host: host -> None, or why not."""
        plug = ident.uuid or ident.name
        origin = {"key": ctx.key, "client": ctx.peer, "request": ctx.request}
        body = {
            "action": "local-off",
            "plug": plug,
            "timeout": timeout,
            "origin": origin,
            "request": ctx.request,
        }
        futs: dict[concurrent.futures.Future[Json], str] = {}
        for h in hosts:
            if h == self.cfg.host:
                futs[self.pool.submit(self.do_local_off, INTERNAL, plug, timeout, body)] = h
            else:
                futs[self.pool.submit(self._ask_peer, h, body, timeout + 5)] = h
        out: dict[str, Optional[str]] = {}
        for fut in concurrent.futures.as_completed(futs):
            h = futs[fut]
            try:
                ans = fut.result()
            except (proto.ProtocolError, BackendError, KvmhaError) as exc:
                out[h] = str(exc)
                continue
            out[h] = (
                None
                if ans.get("status") == "ok" and ans.get("state") == "off"
                else str(ans.get("message", "not off"))
            )
        return out

    def do_off(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        return self._off(ctx, plug, timeout)

    def _off(self, ctx: Ctx, plug: str, timeout: float) -> Json:
        """Power off every copy, then answer by the rule (rule.judge) on a survey taken
        after the last power-off: a copy that appeared meanwhile (a migration ending) is
        found and powered off too."""
        deadline = time.monotonic() + timeout
        early = self._early_freeze(ctx, plug)
        f = self.survey(plug, "off", ctx.request)
        ident, managed, prob = self._decide(ctx, "off", f)
        if prob is not None or ident is None:
            self._thaw(early, plug)
            return prob or problem("internal-error", "no identity")
        frozen: Optional[float] = None
        if early is not None:
            with contextlib.suppress(BackendError, concurrent.futures.TimeoutError):
                frozen = early.result(timeout=max(deadline - time.monotonic(), 1.0))
        role_fut = None
        if managed is not None and self.cluster is not None:
            role_fut = self.pool.submit(self.cluster.set_target_role, managed.rid, "Stopped")
        offs: dict[str, Optional[str]] = {}
        powered: set[str] = set()
        for _ in range(OFF_ROUNDS):
            todo = rule.to_power_off(ident)
            if not todo:
                break
            res = self._power_off(ctx, ident, todo, max(deadline - time.monotonic(), 1.0))
            offs.update(res)
            powered |= {h for h, why in res.items() if why is None}
            if any(why is not None for why in res.values()):
                break
            f = self.survey(ident.uuid or plug, "off", ctx.request)  # confirm: nothing active now
            ident2, prob = rule.identify(f, managed)
            if prob is not None or ident2 is None:
                return prob or problem("internal-error", "no identity")
            ident = ident2
        role_err = None
        if role_fut is not None:
            try:
                role_fut.result(timeout=max(deadline - time.monotonic(), 1.0))
            except (KvmhaError, concurrent.futures.TimeoutError) as exc:
                role_err = (
                    f"could not set target-role=Stopped on {managed.rid if managed else ''}: {exc}"
                )
                self.audit.warning(role_err)
        failed = {h: why for h, why in offs.items() if why is not None}
        if failed:
            return problem(
                "off-failed",
                "; ".join(f"{h}: {why}" for h, why in sorted(failed.items())),
                hosts=sorted(failed),
            )
        answer = rule.judge(f, ident, managed, {}, f.status)
        if answer.get("code") == "managed-active" and managed is not None:
            # all else holds: give the host cluster the time left to see the guest stop
            answer = rule.judge(f, ident, managed, {}, self._managed_stopped(managed, deadline))
        if answer.get("status") == "ok":
            answer.update(hosts=sorted(powered), frozen_s=frozen)
            if not powered:
                answer["already"] = True
        if role_err and answer.get("status") != "ok":
            answer["message"] = f"{answer.get('message')}; {role_err}"
        elif role_err:
            # off is confirmed, but the host cluster may start the guest again: say so, and
            # so put it into the audit record
            answer["message"] = f"off, but {role_err}: the host cluster may start it again"
        return answer

    def _managed_stopped(self, managed: ManagedGuest, deadline: float) -> Optional[Status]:
        """The host cluster's state once it shows managed stopped (or at the deadline)."""
        assert self.cluster is not None
        while True:
            st = self.cluster.status()
            if rule.managed_active(st, managed) is None or time.monotonic() >= deadline:
                return st
            time.sleep(0.2)

    def do_reboot(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        answer = self._off(ctx, plug, timeout)
        if answer.get("status") == "ok":
            f = self.survey(plug)
            managed = self._managed(f)
            ident, _ = rule.identify(f, managed)
            if ident is not None:
                threading.Thread(
                    target=self._power_on_later,
                    args=(ctx.request, ctx.at, ident, managed, sorted(f.answered)),
                    daemon=True,
                ).start()
        return answer

    def _power_on_later(
        self,
        request: str,
        since: float,
        ident: rule.Identity,
        managed: Optional[ManagedGuest],
        hosts: list[str],
    ) -> None:
        """The 'on' half of a reboot, unless an off of the domain came in since."""
        plug = ident.uuid or ident.name
        try:
            if managed is not None and self.cluster is not None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    st = self.cluster.status()
                    if st is not None and managed.rid not in st.placement:
                        break
                    time.sleep(0.5)
                with self._onoff:
                    if self._off_since(plug, request, since) or self._off_since(
                        ident.name, request, since
                    ):
                        self.audit.info(f"reboot: power-on of {plug} cancelled by a later off")
                        return
                    self.cluster.set_target_role(managed.rid, "Started")
                self.audit.info(f"reboot: asked the host cluster to start {managed.rid}")
                return
            for h in hosts:
                body = {
                    "action": "local-on",
                    "plug": plug,
                    "timeout": 30.0,
                    "request": request,
                    "since": since,
                }
                if h == self.cfg.host:
                    ans = self.do_local_on(INTERNAL, plug, 30.0, body)
                else:
                    ans = self._ask_peer(h, body, 35)
                if ans.get("status") == "ok":
                    self.audit.info(f"reboot: started {ident.name} on {h}")
                    return
                if "cancelled" in str(ans.get("message", "")):
                    self.audit.info(f"reboot: power-on of {plug} cancelled by a later off")
                    return
            self.audit.warning(f"reboot: could not start {ident.name} again")
        except (KvmhaError, BackendError, proto.ProtocolError) as exc:
            self.audit.warning(f"reboot: could not start {ident.name} again: {exc}")

    def do_on(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        f = self.survey(plug)
        ident, managed, prob = self._decide(ctx, "on", f)
        if prob is not None or ident is None:
            return prob or problem("internal-error", "no identity")
        if rule.to_power_off(ident):
            return {"status": "ok", "state": "on", "already": True}
        if managed is not None and self.cluster is not None:
            self.cluster.set_target_role(managed.rid, "Started")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                time.sleep(0.5)
                again = self.survey(plug)
                i2, _ = rule.identify(again, managed)
                if i2 is not None and rule.to_power_off(i2):
                    return {"status": "ok", "state": "on"}
            return problem("on-failed", f"{ident.name} not running after {timeout:.0f} s")
        plug_id = ident.uuid or ident.name
        for c in sorted(ident.copies, key=lambda c: c.host):
            body = {"action": "local-on", "plug": plug_id, "timeout": timeout}
            ans = (
                self.do_local_on(INTERNAL, plug_id, timeout, body)
                if c.host == self.cfg.host
                else self._ask_peer(c.host, body, timeout + 5)
            )
            if ans.get("status") == "ok":
                return {"status": "ok", "state": "on", "hosts": [c.host]}
        return problem("on-failed", f"no host can start {ident.name or plug!r}")

    def do_list(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        seen: dict[str, Json] = {}
        hosts = self.member_hosts()
        futs = {
            self.pool.submit(self._ask_peer, h, {"action": "local-list"}): h
            for h, addr in hosts.items()
            if h != self.cfg.host and addr is not None
        }
        results: list[tuple[str, list[Info]]] = []
        try:
            results.append((self.cfg.host, self.backend.domains()))
        except BackendError as exc:
            self.audit.warning(f"list: local libvirt: {exc}")
        for fut in concurrent.futures.as_completed(futs):
            try:
                ans = fut.result()
            except proto.ProtocolError:
                continue
            if ans.get("status") == "ok" and isinstance(ans.get("domains"), list):
                results.append((futs[fut], ans["domains"]))
        for host, doms in results:
            present = set()
            for d in doms:
                if not isinstance(d, dict):
                    continue
                name = str(d.get("name", ""))
                self._saw(host, d)
                if d.get("active"):
                    present.add(rule.norm_uuid(str(d.get("uuid", ""))))
                rec = seen.setdefault(
                    name, {"name": name, "uuid": d.get("uuid", ""), "state": "off"}
                )
                if d.get("active"):
                    rec["state"] = "on"
            self._forget(host, present)
        if self.cluster is not None:
            for g in self.cluster.guests().values():
                seen.setdefault(g.name, {"name": g.name, "uuid": g.uuid, "state": "off"})
        plugs = []
        for name, rec in sorted(seen.items()):
            managed = find_guest(self.cluster, name, str(rec["uuid"])) if self.cluster else None
            tgt = Target(
                name,
                str(rec["uuid"]),
                managed.rid if managed else None,
                managed.tags if managed else frozenset(),
                managed.dc if managed else None,
            )
            if ctx.scope.allows(tgt):
                plugs.append(rec)
        return {"status": "ok", "plugs": plugs}

    # ---- serving -------------------------------------------------------------
    def survey_loop(self) -> None:
        """Remember where domains run and which hosts answer, so that a silent host's
        domains are neither 'unknown' nor called off on an old fence record."""
        while not self._stop.wait(self.cfg.survey_interval):
            try:
                self.do_list(INTERNAL, "", 10.0, {})
                self.refusals.flush()
                self._save_state()
            except Exception as exc:
                self.audit.warning(f"survey failed: {exc}")

    def serve(self, ready: Optional[Callable[[int], None]] = None) -> None:
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                listener.handle(self.request, str(self.client_address[0]))

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            request_queue_size = 512

        self._server = Server((self.cfg.listen, self.cfg.port), Handler)
        port = self._server.server_address[1]
        self.audit.info(
            f"listening on {self.cfg.listen}:{port} as {self.cfg.host}, "
            f"{len(self.keys.all())} guest key(s), peers {', '.join(sorted(self.cfg.peers))}"
        )
        threading.Thread(target=self.survey_loop, daemon=True).start()
        if ready:
            ready(port)
        sd_notify("READY=1", f"STATUS=listening on {self.cfg.listen}:{port}")  # Type=notify
        try:
            self._server.serve_forever(poll_interval=0.5)
        finally:
            self._server.server_close()

    def shutdown(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        self.pool.shutdown(wait=False)
        self.refusals.flush()
        self._save_state()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="kvmha-fence-listener", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--check", action="store_true", help="check the configuration and exit")
    args = ap.parse_args(argv)
    try:
        cfg = Config.load(args.config)
    except ConfigError as exc:
        print(f"kvmha-fence-listener: {exc.message}", file=sys.stderr)
        if exc.fix:
            print(f"  fix: {exc.fix}", file=sys.stderr)
        return 6  # systemd: "not configured"
    audit = Audit(cfg.audit_log, cfg.host, cfg.syslog)
    try:
        host_key = load_host_key(cfg.host_key)
    except KeyFileError as exc:
        audit.log.error(f"cannot start: {exc}")
        return 6  # systemd: "not configured"
    from kvmha.fence.virt import LibvirtBackend

    backend = LibvirtBackend(cfg.libvirt_uri)
    cluster = PacemakerCluster() if cfg.use_cluster else None
    lst = Listener(cfg, backend, cluster, audit, host_key)
    for path, why in lst.keys.problems().items():
        audit.warning(f"key file {path} refused: {why}")
    if args.check:
        print(config_text(cfg), end="")
        return 0

    def stop(*_: object) -> None:
        threading.Thread(target=lst.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        lst.serve()
    except OSError as exc:
        audit.log.error(f"cannot listen on {cfg.listen}:{cfg.port}: {exc}")
        return 1
    audit.info("stopped")
    return 0


def write_host_setup(fence_dir: str, cfg: Config, host_key: Key) -> None:
    """A host's /etc/kvmha/fence (0750): listener.conf (0640), the hosts' key (0600),
    keys/ (0700) -- the modes the RPM installs and 'kvmha doctor' checks."""
    from pathlib import Path

    from kvmha.fence.keys import write_private

    d = Path(fence_dir)
    (d / "keys").mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o750)  # noqa: S103 (root and its group: the RPM's mode)
    os.chmod(d / "keys", 0o700)
    write_private(d / "hosts.key", proto.key_text(host_key.name, host_key.secret))
    conf = d / "listener.conf"
    conf.write_text(config_text(cfg))
    os.chmod(conf, 0o640)


if __name__ == "__main__":
    sys.exit(main())
