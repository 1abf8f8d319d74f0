"""Guest-cluster keys on the hosts and their scopes.

A key lives in ``<keys_dir>/<NAME>.key`` (mode 0600; looser files are refused with the
reason): ``name=``, ``secret=<hex>`` and exactly one scope line: ``domains=D1,D2`` (libvirt
names or UUIDs), ``tag=TAG`` (members of a Pacemaker tag of the host cluster) or
``dc=DC`` (guests whose resource has the meta attribute ``kvmha-dc=DC``). The hosts'
own key (host-to-host forwarding, admin commands) is a key file of the same format
without a scope; it may act on every domain.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Callable, Optional

from kvmha.fence.agent import Key, KeyFileError, check_key_mode, key_text, parse_key_text

SCOPE_KINDS = ("domains", "tag", "dc")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HOST_KEY_PREFIX = "@"  # key names of the hosts' key start with this; guest keys cannot


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


class KeyStore:
    """The guest-cluster keys of one listener, reread when the directory changes."""

    def __init__(self, keys_dir: str, warn: Callable[[str], None]) -> None:
        self.dir = keys_dir
        self.warn = warn
        self._lock = threading.Lock()
        self._stamp: Optional[tuple[float, int]] = None
        self._keys: dict[str, ScopedKey] = {}
        self._problems: dict[str, str] = {}

    def _dir_stamp(self) -> Optional[tuple[float, int]]:
        try:
            st = os.stat(self.dir)
        except OSError:
            return None
        return (st.st_mtime, st.st_ino)

    def reload(self, force: bool = False) -> None:
        with self._lock:
            stamp = self._dir_stamp()
            if not force and stamp == self._stamp:
                return
            self._stamp = stamp
            keys: dict[str, ScopedKey] = {}
            problems: dict[str, str] = {}
            try:
                names = sorted(os.listdir(self.dir))
            except OSError:
                names = []
            for fn in names:
                if not fn.endswith(".key") or fn.startswith("."):
                    continue
                path = os.path.join(self.dir, fn)
                try:
                    sk = load_scoped_key(path)
                except KeyFileError as exc:
                    problems[path] = str(exc)
                    if self._problems.get(path) != str(exc):
                        self.warn(f"ignoring key file: {exc}")
                    continue
                if fn != f"{sk.key.name}.key":
                    problems[path] = f"{path}: file name does not match name={sk.key.name}"
                    self.warn(problems[path])
                    continue
                keys[sk.key.name] = sk
            self._keys = keys
            self._problems = problems

    def get(self, name: str) -> Optional[ScopedKey]:
        self.reload()
        return self._keys.get(name)

    def all(self) -> list[ScopedKey]:
        self.reload()
        return sorted(self._keys.values(), key=lambda k: k.key.name)

    def problems(self) -> dict[str, str]:
        self.reload()
        return dict(self._problems)

    def install(self, name: str, secret: bytes, scope: Scope) -> Path:
        check_name(name)
        path = Path(self.dir) / f"{name}.key"
        write_private(path, host_key_file_text(name, secret, scope))
        self.reload(force=True)
        return path


__all__ = [
    "HOST_KEY_PREFIX",
    "Key",
    "KeyFileError",
    "KeyStore",
    "Scope",
    "ScopedKey",
    "Target",
    "check_key_mode",
    "check_name",
    "guest_key_text",
    "load_host_key",
    "new_secret",
    "parse_key_text",
    "write_private",
]
