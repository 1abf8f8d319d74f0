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

from kvmha.errors import KvmhaError
from kvmha.fence import agent as proto
from kvmha.fence.audit import Audit
from kvmha.fence.cluster import (
    HostCluster,
    ManagedGuest,
    PacemakerCluster,
    find_guest,
    node_fenced,
)
from kvmha.fence.keys import (
    HOST_KEY_PREFIX,
    Key,
    KeyFileError,
    KeyStore,
    Scope,
    Target,
    load_host_key,
)
from kvmha.fence.virt import Backend, BackendError, Info

DEFAULT_CONFIG = "/etc/kvmha/fence/listener.conf"
GUEST_ACTIONS = ("on", "off", "reboot", "status", "list", "monitor")
HOST_ACTIONS = ("locate", "local-off", "local-on", "local-list", "install-key", "keys")
MAX_PLUG = 256
# libvirt domain names as kvmha and virt-install make them, or a UUID (with or without dashes)
PLUG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+:@-]{0,255}\Z")
MAX_TIMEOUT = 300.0
REPLAY_MEMORY = 100_000
ALL = Scope("all", ())
Json = dict[str, Any]


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
                    cfg.peers[name] = parse_address(addr, cfg.port)
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


def parse_address(addr: str, default_port: int) -> tuple[str, int]:
    addr = addr.strip()
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if addr.count(":") == 1:
        host, port = addr.split(":")
        return host, int(port)
    return addr, default_port


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
    is_host: bool
    origin: Optional[str] = None


@dataclasses.dataclass
class Survey:
    """What every host's libvirt says about one plug."""

    found: dict[str, Info]  # host -> info, hosts that know the domain
    answered: list[str]  # hosts that answered (found it or not)
    unreachable: dict[str, str]  # host -> why
    last: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # where it last ran

    def last_host(self) -> Optional[str]:
        """The host it last ran on, by the most recent record of any listener."""
        recs = [r for r in self.last if isinstance(r, dict) and isinstance(r.get("time"), int)]
        if not recs:
            return None
        host = max(recs, key=lambda r: int(r["time"])).get("host")
        return str(host) if host else None

    def active_hosts(self) -> list[str]:
        return sorted(h for h, i in self.found.items() if i.get("active"))

    def identity(self) -> tuple[str, str]:
        for info in self.found.values():
            return str(info.get("name", "")), str(info.get("uuid", ""))
        return "", ""


def wrap_secret(host_secret: bytes, nonce: bytes, data: bytes) -> bytes:
    """XOR with an HMAC-SHA256 keystream (the exchange's MAC covers integrity)."""
    stream = b""
    counter = 0
    while len(stream) < len(data):
        block = proto.transcript(b"wrap", nonce, counter.to_bytes(4, "big"))
        stream += hmac.new(host_secret, block, "sha256").digest()
        counter += 1
    return bytes(a ^ b for a, b in zip(data, stream))


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
        self.keys = KeyStore(cfg.keys_dir, audit.warning)
        self.keys.reload(force=True)
        self._lock = threading.Lock()
        self._active = 0
        self._per_source: dict[str, int] = collections.Counter()
        self._macs: set[bytes] = set()
        self._mac_order: collections.deque[bytes] = collections.deque()
        self._domain_locks: dict[str, threading.Lock] = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=64)
        self.last_seen: dict[str, dict[str, Any]] = self._load_state()
        self._state_dirty = False
        self._server: Optional[socketserver.ThreadingTCPServer] = None
        self._stop = threading.Event()

    # ---- state -------------------------------------------------------------
    def _load_state(self) -> dict[str, dict[str, Any]]:
        if not self.cfg.state_file:
            return {}
        try:
            with open(self.cfg.state_file, encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        if not self.cfg.state_file or not self._state_dirty:
            return
        self._state_dirty = False
        try:
            os.makedirs(os.path.dirname(self.cfg.state_file) or ".", exist_ok=True)
            tmp = self.cfg.state_file + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.last_seen, f)
            os.replace(tmp, self.cfg.state_file)
        except OSError as exc:
            self.audit.warning(f"cannot save {self.cfg.state_file}: {exc}")

    def _saw(self, host: str, info: Info) -> None:
        if not info.get("active"):
            return
        name = str(info.get("name", ""))
        rec = {"host": host, "uuid": info.get("uuid", ""), "time": int(time.time())}
        with self._lock:
            old = self.last_seen.get(name)
            if old is None or old.get("host") != host:
                self._state_dirty = True
            self.last_seen[name] = rec

    def _domain_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._domain_locks.setdefault(name, threading.Lock())

    # ---- admission ---------------------------------------------------------
    def _admit(self, peer: str) -> Optional[str]:
        with self._lock:
            if self._active >= self.cfg.max_connections:
                return "too many connections"
            if self._per_source[peer] >= self.cfg.max_per_source:
                return f"too many connections from {peer}"
            self._active += 1
            self._per_source[peer] += 1
            return None

    def _release(self, peer: str) -> None:
        with self._lock:
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

    # ---- one connection ----------------------------------------------------
    def handle(self, sock: socket.socket, peer: str) -> None:
        t0 = time.monotonic()
        why = self._admit(peer)
        if why is not None:
            self._refuse(sock, peer, None, Refusal("busy", why), t0)
            return
        key_name: Optional[str] = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = t0 + self.cfg.handshake_timeout
            hello = proto.read_frame(sock, proto.MAX_REQUEST_FRAME, deadline)
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
            secret, scope, is_host = self._key_for(name)
            ns = os.urandom(proto.NONCE_BYTES)
            proto.send_frame(sock, {"type": "challenge", "ns": ns.hex()}, deadline)
            req = proto.read_frame(sock, proto.MAX_REQUEST_FRAME, deadline)
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
            self._remember_mac(mac)
            ctx = Ctx(name, scope, peer, is_host)
            answer = self.dispatch(ctx, body)
            self._audit(ctx, body, answer, t0)  # before the answer: the log is never behind
            smac = proto.server_mac(secret, name, nc, ns, mac, answer)
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
            self._refuse(
                sock, peer, key_name, Refusal("internal-error", f"internal error: {exc}"), t0
            )
        finally:
            self._release(peer)

    def _key_for(self, name: str) -> tuple[Optional[bytes], Scope, bool]:
        if name == self.host_key.name:
            return self.host_key.secret, ALL, True
        if name.startswith(HOST_KEY_PREFIX):
            return None, ALL, False
        sk = self.keys.get(name)
        if sk is None:
            return None, ALL, False
        return sk.key.secret, sk.scope, False

    def _refuse(
        self, sock: socket.socket, peer: str, key: Optional[str], why: Refusal, t0: float
    ) -> None:
        self.audit.event(
            peer=peer,
            key=key,
            result="refused",
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
            origin=body.get("origin"),
            result=result,
            hosts=answer.get("hosts"),
            detail=answer.get("message") or None,
            ms=round((time.monotonic() - t0) * 1000, 1),
        )

    # ---- requests ----------------------------------------------------------
    def dispatch(self, ctx: Ctx, body: Json) -> Json:
        action = body.get("action")
        allowed = GUEST_ACTIONS + (HOST_ACTIONS if ctx.is_host else ())
        if not isinstance(action, str) or action not in allowed:
            return problem("unknown-action", f"unknown action {str(action)[:40]!r}")
        plug = body.get("plug", "")
        if not isinstance(plug, str) or (plug and not PLUG_RE.match(plug)):
            return problem("bad-plug", "bad plug: a libvirt domain name or a UUID is expected")
        timeout = body.get("timeout", 20.0)
        if (
            not isinstance(timeout, (int, float))
            or isinstance(timeout, bool)
            or not math.isfinite(timeout)
        ):
            return problem("bad-number", "bad timeout: a finite number of seconds is expected")
        timeout = min(max(float(timeout), 1.0), MAX_TIMEOUT)
        origin = body.get("origin")
        if ctx.is_host and isinstance(origin, str):
            ctx.origin = origin[:200]
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
        info = self.backend.info(plug)
        return {
            "status": "ok",
            "found": info is not None,
            "info": info,
            "last": self._last_record(plug),
        }

    def _last_record(self, plug: str) -> Optional[dict[str, Any]]:
        with self._lock:
            rec = self.last_seen.get(plug)
            if rec is None:
                rec = next(
                    (
                        r
                        for r in self.last_seen.values()
                        if str(r.get("uuid", "")).lower() == plug.lower()
                    ),
                    None,
                )
            return dict(rec) if rec else None

    def do_local_list(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        return {"status": "ok", "domains": self.backend.domains()}

    def do_local_off(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        with self._domain_lock(plug):
            res = self.backend.off(plug, timeout)
        return {"status": "ok", **res}

    def do_local_on(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
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

    # the guest clusters' actions
    def do_monitor(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        self.backend.domains()  # libvirt answers
        return {"status": "ok", "message": f"listener on {self.cfg.host} is serving"}

    def survey(self, plug: str, local_first: bool = False) -> Survey:
        """Ask this host's libvirt and every peer listener about plug."""
        found: dict[str, Info] = {}
        answered: list[str] = []
        unreachable: dict[str, str] = {}
        own = self._last_record(plug)
        last = [own] if own else []
        try:
            info = self.backend.info(plug)
            answered.append(self.cfg.host)
            if info is not None:
                found[self.cfg.host] = info
                self._saw(self.cfg.host, info)
                if local_first and info.get("active"):
                    return Survey(found, answered, unreachable)
        except BackendError as exc:
            unreachable[self.cfg.host] = str(exc)
        futures = {
            self.pool.submit(self._ask_peer, h, {"action": "locate", "plug": plug}): h
            for h in self.cfg.peers
            if h != self.cfg.host
        }
        for fut in concurrent.futures.as_completed(futures):
            h = futures[fut]
            try:
                ans = fut.result()
            except proto.ProtocolError as exc:
                unreachable[h] = str(exc)
                continue
            if ans.get("status") != "ok":
                unreachable[h] = str(ans.get("message", "error"))
                continue
            answered.append(h)
            if isinstance(ans.get("last"), dict):
                last.append(ans["last"])
            if ans.get("found") and isinstance(ans.get("info"), dict):
                found[h] = ans["info"]
                self._saw(h, ans["info"])
        return Survey(found, sorted(answered), unreachable, last)

    def _ask_peer(self, host: str, body: Json, timeout: Optional[float] = None) -> Json:
        addr, port = self.cfg.peers[host]
        t = self.cfg.peer_timeout
        return proto.exchange(addr, port, self.host_key, body, t, timeout or t + 5)

    def target(self, plug: str, sv: Survey) -> tuple[Target, Optional[ManagedGuest]]:
        name, uuid = sv.identity()
        managed = None
        if self.cluster is not None:
            managed = find_guest(self.cluster, name or plug, uuid)
        if managed is not None:
            name = name or managed.name
            uuid = uuid or managed.uuid
            return Target(name, uuid, managed.rid, managed.tags, managed.dc), managed
        return Target(name or plug, uuid), None

    def _authorize(
        self, ctx: Ctx, action: str, plug: str
    ) -> tuple[Target, Optional[ManagedGuest], Survey, Optional[Json]]:
        sv = self.survey(plug, local_first=(action == "status"))
        tgt, managed = self.target(plug, sv)
        if not ctx.scope.allows(tgt):
            msg = f"key {ctx.key!r} may not {action} {plug!r} (scope {ctx.scope.describe()})"
            return tgt, managed, sv, problem("out-of-scope", msg, "denied")
        return tgt, managed, sv, None

    def _off_certain(
        self, tgt: Target, managed: Optional[ManagedGuest], sv: Survey
    ) -> Optional[Json]:
        """None when 'off' is the truth; otherwise the error answer saying why not."""
        st = self.cluster.status() if self.cluster is not None else None
        for host, why in sorted(sv.unreachable.items()):
            if not node_fenced(st, host):
                return problem(
                    "host-unconfirmed",
                    f"{host} does not answer ({why}) and is not recorded as fenced",
                    hosts=[host],
                )
        if sv.found or managed is not None:
            return None
        last = sv.last_host()
        if last is not None and st is not None and last in st.fenced:
            return None
        return problem("unknown-domain", f"no host knows domain {tgt.name!r}")

    def do_status(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        tgt, managed, sv, denied = self._authorize(ctx, "status", plug)
        if denied:
            return denied
        active = sv.active_hosts()
        if active:
            return {"status": "ok", "state": "on", "hosts": active}
        why = self._off_certain(tgt, managed, sv)
        if why:
            return why
        return {"status": "ok", "state": "off"}

    def _early_local_off(
        self, ctx: Ctx, plug: str, timeout: float
    ) -> Optional[concurrent.futures.Future[Json]]:
        """Off at once when this host runs the domain and the key may fence it.

        The peers are asked meanwhile (another instance, mid-migration, is fenced too):
        the look-up is off the critical path of the common case.
        """
        try:
            info = self.backend.info(plug)
        except BackendError:
            return None
        if info is None or not info.get("active"):
            return None
        tgt, _managed = self.target(plug, Survey({self.cfg.host: info}, [self.cfg.host], {}))
        if not ctx.scope.allows(tgt):
            return None
        local = tgt.uuid or tgt.name
        return self.pool.submit(self.do_local_off, Ctx("", ALL, "", True), local, timeout, {})

    def _off_everywhere(
        self,
        tgt: Target,
        hosts: list[str],
        timeout: float,
        early: Optional[concurrent.futures.Future[Json]] = None,
    ) -> Json:
        plug = tgt.uuid or tgt.name
        body = {"action": "local-off", "plug": plug, "timeout": timeout}
        futs: dict[concurrent.futures.Future[Json], str] = {}
        if early is not None:
            futs[early] = self.cfg.host
            hosts = sorted(set(hosts) | {self.cfg.host})
        for h in hosts:
            if h == self.cfg.host and early is not None:
                continue
            if h == self.cfg.host:
                futs[
                    self.pool.submit(self.do_local_off, Ctx("", ALL, "", True), plug, timeout, body)
                ] = h
            else:
                futs[self.pool.submit(self._ask_peer, h, body, timeout + 5)] = h
        errors = []
        frozen = []
        for fut in concurrent.futures.as_completed(futs):
            h = futs[fut]
            try:
                ans = fut.result()
            except (proto.ProtocolError, BackendError) as exc:
                errors.append(f"{h}: {exc}")
                continue
            if ans.get("status") != "ok":
                errors.append(f"{h}: {ans.get('message')}")
            elif ans.get("frozen_s") is not None:
                frozen.append(float(ans["frozen_s"]))
        if errors:
            return problem("off-failed", "; ".join(errors))
        return {
            "status": "ok",
            "state": "off",
            "hosts": hosts,
            "frozen_s": min(frozen) if frozen else None,
        }

    def do_off(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        early = self._early_local_off(ctx, plug, timeout)
        tgt, managed, sv, denied = self._authorize(ctx, "off", plug)
        if denied:
            return denied
        return self._off(tgt, managed, sv, timeout, early)

    def _off(
        self,
        tgt: Target,
        managed: Optional[ManagedGuest],
        sv: Survey,
        timeout: float,
        early: Optional[concurrent.futures.Future[Json]] = None,
    ) -> Json:
        role_fut = None
        if managed is not None and self.cluster is not None:
            cluster = self.cluster
            role_fut = self.pool.submit(cluster.set_target_role, managed.rid, "Stopped")
        active = sv.active_hosts()
        if active or early is not None:
            answer = self._off_everywhere(tgt, active, timeout, early)
        else:
            why = self._off_certain(tgt, managed, sv)
            answer = why if why else {"status": "ok", "state": "off", "already": True}
        if role_fut is not None:
            try:
                role_fut.result(timeout=30)
            except (KvmhaError, concurrent.futures.TimeoutError) as exc:
                note = f"could not set target-role=Stopped on {managed.rid if managed else ''}: "
                answer["message"] = note + str(exc)
                self.audit.warning(answer["message"])
        return answer

    def do_reboot(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        early = self._early_local_off(ctx, plug, timeout)
        tgt, managed, sv, denied = self._authorize(ctx, "reboot", plug)
        if denied:
            return denied
        answer = self._off(tgt, managed, sv, timeout, early)
        if answer.get("status") == "ok":
            hosts = sorted(sv.found)
            threading.Thread(
                target=self._power_on_later, args=(tgt, managed, hosts), daemon=True
            ).start()
        return answer

    def _power_on_later(
        self, tgt: Target, managed: Optional[ManagedGuest], hosts: list[str]
    ) -> None:
        """The 'on' half of a reboot: after the host cluster has seen the guest stop."""
        try:
            if managed is not None and self.cluster is not None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    st = self.cluster.status()
                    if st is not None and managed.rid not in st.placement:
                        break
                    time.sleep(0.5)
                self.cluster.set_target_role(managed.rid, "Started")
                self.audit.info(f"reboot: asked the host cluster to start {managed.rid}")
                return
            for h in hosts:
                body = {"action": "local-on", "plug": tgt.uuid or tgt.name, "timeout": 30.0}
                ans = (
                    self.do_local_on(Ctx("", ALL, "", True), tgt.uuid or tgt.name, 30.0, body)
                    if h == self.cfg.host
                    else self._ask_peer(h, body, 35)
                )
                if ans.get("status") == "ok":
                    self.audit.info(f"reboot: started {tgt.name} on {h}")
                    return
            self.audit.warning(f"reboot: could not start {tgt.name} again")
        except (KvmhaError, BackendError, proto.ProtocolError) as exc:
            self.audit.warning(f"reboot: could not start {tgt.name} again: {exc}")

    def do_on(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        tgt, managed, sv, denied = self._authorize(ctx, "on", plug)
        if denied:
            return denied
        if sv.active_hosts():
            return {"status": "ok", "state": "on", "already": True}
        if managed is not None and self.cluster is not None:
            self.cluster.set_target_role(managed.rid, "Started")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                time.sleep(0.5)
                if self.survey(plug).active_hosts():
                    return {"status": "ok", "state": "on"}
            return problem("on-failed", f"{tgt.name} not running after {timeout:.0f} s")
        for h, info in sorted(sv.found.items()):
            if not info.get("persistent"):
                continue
            body = {"action": "local-on", "plug": tgt.uuid or tgt.name, "timeout": timeout}
            ans = (
                self.do_local_on(Ctx("", ALL, "", True), tgt.uuid or tgt.name, timeout, body)
                if h == self.cfg.host
                else self._ask_peer(h, body, timeout + 5)
            )
            if ans.get("status") == "ok":
                return {"status": "ok", "state": "on", "hosts": [h]}
        return problem("on-failed", f"no host can start {tgt.name!r}")

    def do_list(self, ctx: Ctx, plug: str, timeout: float, body: Json) -> Json:
        seen: dict[str, Json] = {}
        futs = {
            self.pool.submit(self._ask_peer, h, {"action": "local-list"}): h
            for h in self.cfg.peers
            if h != self.cfg.host
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
            for d in doms:
                if not isinstance(d, dict):
                    continue
                name = str(d.get("name", ""))
                self._saw(host, d)
                rec = seen.setdefault(
                    name, {"name": name, "uuid": d.get("uuid", ""), "state": "off"}
                )
                if d.get("active"):
                    rec["state"] = "on"
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
        """Remember where domains run, so that a dead host's domains are not 'unknown'."""
        while not self._stop.wait(self.cfg.survey_interval):
            try:
                self.do_list(Ctx("", ALL, "", True), "", 10.0, {})
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
            request_queue_size = 256

        self._server = Server((self.cfg.listen, self.cfg.port), Handler)
        port = self._server.server_address[1]
        self.audit.info(
            f"listening on {self.cfg.listen}:{port} as {self.cfg.host}, "
            f"{len(self.keys.all())} guest key(s), peers {', '.join(sorted(self.cfg.peers))}"
        )
        threading.Thread(target=self.survey_loop, daemon=True).start()
        if ready:
            ready(port)
        try:
            self._server.serve_forever(poll_interval=0.5)
        finally:
            self._server.server_close()

    def shutdown(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        self.pool.shutdown(wait=False)
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
