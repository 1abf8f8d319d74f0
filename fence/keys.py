"""Guest-cluster keys on the hosts and their scopes.

A key lives in ``<keys_dir>/<NAME>.key`` (mode 0600; looser files are refused with the
reason): ``name=``, ``secret=<hex>`` and exactly one scope line: ``domains=D1,D2`` (libvirt
names or UUIDs), ``tag=TAG`` (members of a Pacemaker tag of the host cluster) or
``dc=DC`` (guests whose resource has the meta attribute ``kvmha-dc=DC``). The hosts'
own key (host-to-host forwarding, admin commands) is a key file of the same format
without a scope; it may act on every domain.

Keys made by ``kvmha fence key create`` live in the host cluster's CIB instead, as
metadata only (name, scope, generation, the previous generation and until when it is
still accepted, revocation, expiry), in the ``crm_config`` property set
``kvmha-fence-keys``. No secret is in the CIB: a key's secret is derived from the hosts'
secret and ``NAME:GENERATION`` (HMAC-SHA256), so every host that has the hosts' secret
knows every key, and Pacemaker replicates the metadata to every host, a returning one
included. On the wire (and in the guests' key file) such a key is named
``NAME:GENERATION``; file keys cannot contain ``:``.

A key file is checked again whenever its mode, owner, size, mtime or inode changes:
a key chmod'ed to 0644 stops working at the next request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Optional

from kvmha.fence.agent import (
    Key,
    KeyFileError,
    check_key_mode,
    key_text,
    parse_key_text,
    transcript,
)

SCOPE_KINDS = ("domains", "tag", "dc")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HOST_KEY_PREFIX = "@"  # key names of the hosts' key start with this; guest keys cannot
CIB_SET_ID = "kvmha-fence-keys"  # crm_config property set with the keys' metadata
CIB_KEY_PREFIX = "kvmha-fence-key-"  # nvpair name of key NAME: kvmha-fence-key-NAME
CIB_HOSTS_NVPAIR = "kvmha-fence-hosts"  # the hosts' secret's name and fingerprint
GENERATION_SEP = ":"
GUEST_KEY_LABEL = b"kvmha-fence guest key v1"
HOSTS_SECRET_LABEL = b"kvmha-fence hosts' secret from the corosync authkey v1"
FINGERPRINT_LABEL = b"kvmha-fence hosts' secret fingerprint v1"
CIB_TTL = 1.0  # seconds a CIB read is reused: a revocation takes effect within this


@dataclasses.dataclass(frozen=True)
class Target:
    """What the listener knows about a domain, for scope checks."""

    name: str
    uuid: str = ""
    resource: Optional[str] = None  # host-cluster resource id, when managed
    tags: frozenset[str] = frozenset()
    dc: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Scope:
    kind: str  # domains | tag | dc | all
    values: tuple[str, ...]

    @classmethod
    def parse(cls, fields: dict[str, str], where: str) -> Scope:
        given = [k for k in SCOPE_KINDS if fields.get(k)]
        if len(given) != 1:
            raise KeyFileError(f"{where}: needs exactly one of domains=, tag=, dc=")
        kind = given[0]
        values = tuple(v.strip() for v in fields[kind].split(",") if v.strip())
        if not values:
            raise KeyFileError(f"{where}: {kind}= is empty")
        if kind != "domains" and len(values) != 1:
            raise KeyFileError(f"{where}: {kind}= takes one value")
        return cls(kind, values)

    def allows(self, target: Target) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "domains":
            names = {v for v in self.values}
            lowered = {v.lower() for v in self.values}
            return target.name in names or (bool(target.uuid) and target.uuid.lower() in lowered)
        if self.kind == "tag":
            return self.values[0] in target.tags
        if self.kind == "dc":
            return target.dc is not None and target.dc == self.values[0]
        return False

    def allows_plug_literally(self, plug: str) -> bool:
        """Before the target is resolved: is the plug as given named in the scope?"""
        return self.kind == "all" or (
            self.kind == "domains" and plug.lower() in {v.lower() for v in self.values}
        )

    def describe(self) -> str:
        return "all domains" if self.kind == "all" else f"{self.kind}={','.join(self.values)}"

    def as_fields(self) -> dict[str, str]:
        return {self.kind: ",".join(self.values)}


@dataclasses.dataclass(frozen=True)
class ScopedKey:
    key: Key
    scope: Scope
    path: str


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise KeyFileError(
            f"invalid key name {name!r}: use letters, digits, '_', '.', '-' (max 64)"
        )
    return name


def write_private(path: Path, text: str) -> None:
    """Write a file that is 0600 from its first byte on, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def guest_key_text(name: str, secret: bytes) -> str:
    """What goes into the guests (no scope: the hosts decide what the key may do)."""
    return key_text(name, secret)


def host_key_file_text(name: str, secret: bytes, scope: Scope) -> str:
    return key_text(name, secret, scope.as_fields())


def load_scoped_key(path: str) -> ScopedKey:
    key = Key.load(path)
    if key.name.startswith(HOST_KEY_PREFIX):
        raise KeyFileError(f"{path}: guest key names cannot start with {HOST_KEY_PREFIX!r}")
    return ScopedKey(key, Scope.parse(key.fields, path), path)


def load_host_key(path: str) -> Key:
    key = Key.load(path)
    if not key.name.startswith(HOST_KEY_PREFIX):
        raise KeyFileError(f"{path}: the hosts' key name must start with {HOST_KEY_PREFIX!r}")
    return key


def derive_guest_secret(hosts_secret: bytes, name: str, generation: int) -> bytes:
    """The secret of CIB key NAME at GENERATION: only holders of the hosts' secret know it."""
    msg = transcript(GUEST_KEY_LABEL, name.encode(), str(generation).encode())
    return hmac.new(hosts_secret, msg, hashlib.sha256).digest()


def hosts_secret_from_authkey(authkey: bytes) -> bytes:
    """The hosts' secret derived from corosync's authkey (which pcs gives every host)."""
    if len(authkey) < 16:
        raise KeyFileError("the corosync authkey is shorter than 16 bytes")
    return hmac.new(authkey, transcript(HOSTS_SECRET_LABEL), hashlib.sha256).digest()


def fingerprint(hosts_secret: bytes) -> str:
    """Safe to publish (in the CIB): tells whether two hosts have the same hosts' secret."""
    return hmac.new(hosts_secret, transcript(FINGERPRINT_LABEL), hashlib.sha256).hexdigest()[:32]


def wire_name(name: str, generation: int) -> str:
    return f"{name}{GENERATION_SEP}{generation}"


def split_wire_name(wire: str) -> Optional[tuple[str, int]]:
    name, sep, gen = wire.rpartition(GENERATION_SEP)
    if not sep or not gen.isdigit() or not NAME_RE.match(name):
        return None
    return name, int(gen)


@dataclasses.dataclass(frozen=True)
class KeyMeta:
    """A CIB key's metadata (no secret)."""

    name: str
    scope: Scope
    generation: int = 1
    created: int = 0
    previous: Optional[int] = None  # the generation before the last rotation ...
    previous_until: Optional[int] = None  # ... accepted until this time (epoch seconds)
    expires: Optional[int] = None
    revoked: Optional[int] = None
    revoked_by: Optional[str] = None

    def refusal(self, generation: int, now: float) -> Optional[str]:
        """None when NAME:generation is accepted now; otherwise why not."""
        w = wire_name(self.name, generation)
        if self.revoked is not None:
            return f"key {w} is revoked (since {_iso(self.revoked)} by {self.revoked_by})"
        if self.expires is not None and now >= self.expires:
            return f"key {w} expired at {_iso(self.expires)}"
        if generation == self.generation:
            return None
        if generation == self.previous and self.previous_until is not None:
            if now < self.previous_until:
                return None
            return (
                f"key {w} was rotated to generation {self.generation}; the old one was "
                f"accepted until {_iso(self.previous_until)}"
            )
        return f"key {w}: no such generation (current {self.generation})"

    def accepted(self, now: float) -> list[int]:
        return [g for g in (self.generation, self.previous) if g and not self.refusal(g, now)]

    def to_json(self) -> str:
        d: dict[str, Any] = {"v": 1, "scope": self.scope.as_fields()}
        for f in dataclasses.fields(self):
            if f.name not in ("name", "scope"):
                d[f.name] = getattr(self, f.name)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, name: str, text: str) -> KeyMeta:
        where = f"CIB key {name!r}"
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("v") != 1:
                raise KeyFileError(f"{where}: unknown metadata version")
            scope = Scope.parse({str(k): str(v) for k, v in dict(d["scope"]).items()}, where)

            def opt_int(k: str) -> Optional[int]:
                v = d.get(k)
                return None if v is None else int(v)

            gen = int(d["generation"])
            if gen < 1:
                raise KeyFileError(f"{where}: generation must be >= 1")
            by = d.get("revoked_by")
            return cls(
                check_name(name),
                scope,
                gen,
                int(d.get("created", 0)),
                opt_int("previous"),
                opt_int("previous_until"),
                opt_int("expires"),
                opt_int("revoked"),
                None if by is None else str(by),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{where}: malformed metadata ({exc})") from exc

    def as_dict(self, now: Optional[float] = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        d = dataclasses.asdict(self)
        d["scope"] = self.scope.describe()
        d["accepted_generations"] = self.accepted(now)
        d["state"] = (
            "revoked"
            if self.revoked is not None
            else "expired"
            if self.expires is not None and now >= self.expires
            else "active"
        )
        return d


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse_cib_keys(cib: ET.Element) -> tuple[dict[str, KeyMeta], dict[str, str], Optional[str]]:
    """(keys, problems, the hosts' secret fingerprint) from a CIB or its crm_config."""
    keys: dict[str, KeyMeta] = {}
    problems: dict[str, str] = {}
    fp: Optional[str] = None
    for ps in cib.iter("cluster_property_set"):
        if ps.get("id") != CIB_SET_ID:
            continue
        for nv in ps.iterfind("nvpair"):
            n, v = nv.get("name", ""), nv.get("value", "")
            if n == CIB_HOSTS_NVPAIR:
                try:
                    fp = str(json.loads(v)["fingerprint"])
                except (ValueError, KeyError, TypeError):
                    problems["cib:" + n] = "malformed hosts' secret record"
                continue
            if not n.startswith(CIB_KEY_PREFIX):
                continue
            name = n[len(CIB_KEY_PREFIX) :]
            try:
                keys[name] = KeyMeta.from_json(name, v)
            except KeyFileError as exc:
                problems["cib:" + name] = str(exc)
    return keys, problems, fp


def cib_nvpair_xml(name: str, value: str) -> str:
    """A crm_config nvpair of the kvmha-fence-keys set, for cibadmin --modify."""
    nv = ET.Element("nvpair", {"id": f"{CIB_SET_ID}-{name}", "name": name, "value": value})
    ps = ET.Element("cluster_property_set", {"id": CIB_SET_ID})
    ps.append(nv)
    cfg = ET.Element("crm_config")
    cfg.append(ps)
    return ET.tostring(cfg, encoding="unicode")


_Stamp = tuple[int, int, int, int, int]  # mode, uid, size, mtime_ns, inode


def _file_stamp(path: str) -> Optional[_Stamp]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, st.st_ino)


class KeyStore:
    """The guest-cluster keys of one listener.

    File keys: the directory is listed again when it changes, and each key file is
    checked again (mode, owner, content) whenever its stat changes. CIB keys (when
    ``hosts_secret`` and ``cib`` are given): the metadata is read from the CIB at most
    every ``ttl`` seconds; when the CIB cannot be read no CIB key is accepted (fail
    closed: a revocation must never be missed because the CIB was unreachable).
    """

    def __init__(
        self,
        keys_dir: str,
        warn: Callable[[str], None],
        hosts_secret: Optional[bytes] = None,
        cib: Optional[Callable[[], ET.Element]] = None,
        ttl: float = CIB_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dir = keys_dir
        self.warn = warn
        self.hosts_secret = hosts_secret
        self.cib = cib if hosts_secret is not None else None
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._stamp: Optional[tuple[int, int]] = None
        self._files: dict[str, tuple[Optional[_Stamp], Optional[ScopedKey], Optional[str]]] = {}
        self._keys: dict[str, ScopedKey] = {}
        self._problems: dict[str, str] = {}
        self._cib_read_at: Optional[float] = None
        self._cib_keys: dict[str, KeyMeta] = {}
        self._cib_problems: dict[str, str] = {}
        self._cib_error: Optional[str] = None

    def _dir_stamp(self) -> Optional[tuple[int, int]]:
        try:
            st = os.stat(self.dir)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    # ---- key files -----------------------------------------------------------
    def reload(self, force: bool = False) -> None:
        with self._lock:
            stamp = self._dir_stamp()
            if force or stamp != self._stamp:
                self._stamp = stamp
                try:
                    names = sorted(os.listdir(self.dir))
                except OSError:
                    names = []
                paths = [
                    os.path.join(self.dir, fn)
                    for fn in names
                    if fn.endswith(".key") and not fn.startswith(".")
                ]
                self._files = {p: self._files.get(p, (None, None, None)) for p in paths}
            changed = force
            for path, (old, _sk, _why) in list(self._files.items()):
                now = _file_stamp(path)
                if now is not None and now == old and not force:
                    continue
                changed = True
                self._files[path] = (now, *self._check_file(path))
            if changed:
                self._keys = {sk.key.name: sk for _s, sk, _w in self._files.values() if sk}
                self._problems = {p: w for p, (_s, _k, w) in self._files.items() if w}

    def _check_file(self, path: str) -> tuple[Optional[ScopedKey], Optional[str]]:
        try:
            sk = load_scoped_key(path)
        except KeyFileError as exc:
            if self._problems.get(path) != str(exc):
                self.warn(f"ignoring key file: {exc}")
            return None, str(exc)
        if os.path.basename(path) != f"{sk.key.name}.key":
            why = f"{path}: file name does not match name={sk.key.name}"
            if self._problems.get(path) != why:
                self.warn(why)
            return None, why
        if GENERATION_SEP in sk.key.name:
            why = f"{path}: file key names cannot contain {GENERATION_SEP!r} (CIB keys do)"
            return None, why
        return sk, None

    # ---- CIB keys ------------------------------------------------------------
    def _cib_reload(self) -> None:
        if self.cib is None:
            return
        now = time.monotonic()
        with self._lock:
            if self._cib_read_at is not None and now - self._cib_read_at < self.ttl:
                return
            self._cib_read_at = now
        try:
            keys, problems, _fp = parse_cib_keys(self.cib())
            error = None
        except Exception as exc:  # the CIB unreadable: fail closed
            keys, problems, error = {}, {}, f"cannot read the keys from the CIB: {exc}"
        with self._lock:
            if error and error != self._cib_error:
                self.warn(error + " (CIB keys are refused until it answers)")
            for p, why in problems.items():
                if self._cib_problems.get(p) != why:
                    self.warn(f"ignoring {why}")
            self._cib_keys, self._cib_problems, self._cib_error = keys, problems, error

    def _cib_key(self, wire: str) -> Optional[ScopedKey]:
        split = split_wire_name(wire)
        if split is None or self.hosts_secret is None:
            return None
        self._cib_reload()
        name, gen = split
        meta = self._cib_keys.get(name)
        if meta is None:
            return None
        why = meta.refusal(gen, self.clock())
        if why is not None:
            self.warn(f"refusing {why}")
            return None
        secret = derive_guest_secret(self.hosts_secret, name, gen)
        return ScopedKey(Key(wire, secret), meta.scope, f"cib:{CIB_SET_ID}/{name}")

    def cib_keys(self) -> dict[str, KeyMeta]:
        self._cib_reload()
        return dict(self._cib_keys)

    # ---- the listener's view ---------------------------------------------------
    def get(self, name: str) -> Optional[ScopedKey]:
        if GENERATION_SEP in name:
            return self._cib_key(name)
        self.reload()
        return self._keys.get(name)

    def all(self) -> list[ScopedKey]:
        self.reload()
        out = list(self._keys.values())
        if self.hosts_secret is not None:
            now = self.clock()
            for meta in self.cib_keys().values():
                for gen in meta.accepted(now):
                    secret = derive_guest_secret(self.hosts_secret, meta.name, gen)
                    w = wire_name(meta.name, gen)
                    out.append(
                        ScopedKey(Key(w, secret), meta.scope, f"cib:{CIB_SET_ID}/{meta.name}")
                    )
        return sorted(out, key=lambda k: k.key.name)

    def problems(self) -> dict[str, str]:
        self.reload()
        out = dict(self._problems)
        if self.cib is not None:
            self._cib_reload()
            out.update(self._cib_problems)
            if self._cib_error:
                out["cib"] = self._cib_error
        return out

    def install(self, name: str, secret: bytes, scope: Scope) -> Path:
        check_name(name)
        path = Path(self.dir) / f"{name}.key"
        write_private(path, host_key_file_text(name, secret, scope))
        self.reload(force=True)
        return path


def pacemaker_cib() -> ET.Element:
    """The local CIB's crm_config (the default CIB source of a listener), bounded: a
    handshake must not wait on a hung CIB manager."""
    from kvmha import pcmk

    return pcmk.query_cib("crm_config", timeout=5.0)


__all__ = [
    "CIB_SET_ID",
    "HOST_KEY_PREFIX",
    "Key",
    "KeyFileError",
    "KeyMeta",
    "KeyStore",
    "Scope",
    "ScopedKey",
    "Target",
    "check_key_mode",
    "check_name",
    "cib_nvpair_xml",
    "derive_guest_secret",
    "fingerprint",
    "guest_key_text",
    "hosts_secret_from_authkey",
    "load_host_key",
    "new_secret",
    "pacemaker_cib",
    "parse_cib_keys",
    "parse_key_text",
    "split_wire_name",
    "wire_name",
    "write_private",
]
