"""``kvmha fence``: set-up of the fence listeners, guest-cluster keys, an end-to-end check.

Run on a host of the host cluster, as root:

    kvmha fence init [--node NAME] [--secret-file FILE] [--json]
    kvmha fence key create NAME (--domains D1,D2 | --tag TAG | --dc DC) [--expires 30d]
    kvmha fence key list | show NAME | revoke NAME | rotate NAME [--overlap 24h] | sync
    kvmha fence test DOMAIN [--key FILE] [--json]

The hosts' secret (``/etc/kvmha/fence/hosts.key``) is derived by ``init`` from corosync's
authkey, which ``pcs cluster setup`` and ``pcs cluster node add`` already copy to every
host, so every host of one cluster derives the same secret without copying a file; its
fingerprint in the CIB tells a host whose secret differs. Keys made here live in the CIB
as metadata (no secret); every listener derives their secrets from the hosts' secret, and
a host that was down gets every key and revocation with the CIB when it rejoins.
Every command is idempotent; ``--json`` prints one document whose ``"schema"`` names its
JSON Schema in docs/schemas/ (kvmha.fence-init.v1, kvmha.fence-key.v1, ...).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Optional

import click

from kvmha.errors import KvmhaError, UsageError
from kvmha.fence import agent
from kvmha.fence.keys import (
    CIB_HOSTS_NVPAIR,
    CIB_KEY_PREFIX,
    KeyFileError,
    KeyMeta,
    KeyStore,
    Scope,
    check_name,
    cib_nvpair_xml,
    derive_guest_secret,
    fingerprint,
    hosts_secret_from_authkey,
    load_host_key,
    pacemaker_cib,
    parse_cib_keys,
    wire_name,
    write_private,
)
from kvmha.fence.listener import DEFAULT_CONFIG, Config, config_text, wrap_secret
from kvmha.tools import output
from kvmha.tools.output import json_option

COROSYNC_CONF = "/etc/corosync/corosync.conf"
COROSYNC_AUTHKEY = "/etc/corosync/authkey"
DEFAULT_OVERLAP = "24h"
CIB_NAME_MAX = 48  # NAME:GENERATION must fit the protocol's 64 characters
REVOKE_WAIT = 10.0  # seconds `revoke` waits for every reachable listener to refuse

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    envvar="KVMHA_FENCE_CONFIG",
    help="The fence listener's configuration on this host.",
)


def fail_after_report(as_json: bool, message: str, fix: str) -> None:
    """A failure after the report was printed: under --json stdout keeps its one document
    (the error goes to stderr only, the exit code says it), otherwise the usual error."""
    if not as_json:
        raise KvmhaError(message, fix)
    output.print_error(message, fix, 1, False)
    click.get_current_context().exit(1)


def emit(as_json: bool, schema: str, data: dict[str, Any], text: Callable[[], None]) -> None:
    if as_json:
        output.emit(schema, data)
    else:
        text()


# ---- corosync.conf -----------------------------------------------------------------
def parse_corosync_conf(text: str) -> dict[str, Any]:
    """The parts kvmha needs: cluster_name and the nodelist (name, ring0_addr, nodeid)."""
    stack: list[str] = []
    nodes: list[dict[str, str]] = []
    cluster_name = ""
    cur: Optional[dict[str, str]] = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*\{$", line)
        if m:
            stack.append(m.group(1))
            if stack == ["nodelist", "node"]:
                cur = {}
            continue
        if line == "}":
            if stack == ["nodelist", "node"] and cur is not None:
                nodes.append(cur)
                cur = None
            if stack:
                stack.pop()
            continue
        k, sep, v = line.partition(":")
        if not sep:
            continue
        k, v = k.strip(), v.strip()
        if stack == ["totem"] and k == "cluster_name":
            cluster_name = v
        elif stack == ["nodelist", "node"] and cur is not None:
            cur[k] = v
    return {"cluster_name": cluster_name, "nodes": nodes}


def _read_corosync(path: Path) -> dict[str, Any]:
    try:
        conf = parse_corosync_conf(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KvmhaError(
            f"cannot read {path}: {exc.strerror}",
            "set up the host cluster first: pcs host auth ... && pcs cluster setup ...",
        ) from exc
    nodes = [n for n in conf["nodes"] if n.get("name") and n.get("ring0_addr")]
    if not nodes:
        raise KvmhaError(
            f"{path} has no nodelist with name: and ring0_addr: per node",
            "create the cluster with 'pcs cluster setup NAME HOST1 addr=... HOST2 addr=...'",
        )
    conf["nodes"] = nodes
    return conf


def _this_node(nodes: list[dict[str, str]], given: Optional[str]) -> str:
    names = [n["name"] for n in nodes]
    if given:
        if given not in names:
            raise UsageError(
                f"node {given!r} is not in corosync's nodelist ({', '.join(names)})",
                "give --node one of those names",
            )
        return given
    full = socket.gethostname()
    for cand in (full, full.split(".")[0]):
        if cand in names:
            return cand
    raise UsageError(
        f"this host's name {full!r} is not in corosync's nodelist ({', '.join(names)})",
        "give this host's node name with --node NAME",
    )


# ---- the CIB -------------------------------------------------------------------------
def _cib() -> ET.Element:
    try:
        return pacemaker_cib()
    except KvmhaError:
        raise
    except Exception as exc:
        raise KvmhaError(f"cannot read the CIB: {exc}", "run this on a cluster host") from exc


def _cib_write(name: str, value: str) -> None:
    from kvmha import pcmk

    pcmk.cib_modify(cib_nvpair_xml(name, value))


def _cib_keys() -> tuple[dict[str, KeyMeta], Optional[str]]:
    keys, problems, fp = parse_cib_keys(_cib())
    for where, why in problems.items():
        click.echo(f"kvmha: warning: {where}: {why}", err=True)
    return keys, fp


def _check_fingerprint(secret: bytes, publish: bool) -> str:
    """'matches' or 'published'; an error when this host's hosts' secret differs."""
    _keys, fp = _cib_keys()
    mine = fingerprint(secret)
    if fp is None:
        if not publish:
            return "absent"
        _cib_write(CIB_HOSTS_NVPAIR, json.dumps({"fingerprint": mine}))
        return "published"
    if fp != mine:
        raise KvmhaError(
            "this host's hosts' secret differs from the one the cluster's keys use "
            f"(fingerprint {mine[:12]} here, {fp[:12]} in the CIB)",
            "copy /etc/kvmha/fence/hosts.key from a host that works: "
            "scp -p HOST:/etc/kvmha/fence/hosts.key /root/hosts.key && "
            "kvmha fence init --secret-file /root/hosts.key --force",
        )
    return "matches"


# ---- this host's listener ------------------------------------------------------------
def _load(config_path: Path) -> tuple[Config, agent.Key]:
    if not config_path.exists():
        raise KvmhaError(
            f"{config_path} does not exist: this host is not set up for fencing",
            "run 'kvmha fence init' on this host",
        )
    try:
        cfg = Config.load(str(config_path))
    except SystemExit as exc:
        raise KvmhaError(str(exc), f"fix {config_path} or rerun 'kvmha fence init'") from exc
    try:
        return cfg, load_host_key(cfg.host_key)
    except KeyFileError as exc:
        raise KvmhaError(str(exc), "run 'kvmha fence init' on this host") from exc


def _listeners(cfg: Config) -> list[tuple[str, str, int]]:
    """(host, address, port) of every listener, this host's first."""
    peers = sorted(cfg.peers.items(), key=lambda kv: (kv[0] != cfg.host, kv[0]))
    out = [(h, a, p) for h, (a, p) in peers]
    if cfg.host not in cfg.peers:
        out.insert(0, (cfg.host, "127.0.0.1", cfg.port))
    return out


def _served(cfg: Config, host_key: agent.Key) -> dict[str, Any]:
    """host -> the key names its listener accepts now, or {'error': why}."""
    out: dict[str, Any] = {}
    for host, addr, port in _listeners(cfg):
        try:
            ans = agent.exchange(addr, port, host_key, {"action": "keys"}, 3, 10)
        except agent.ProtocolError as exc:
            out[host] = {"error": str(exc)}
            continue
        if ans.get("status") != "ok":
            out[host] = {"error": str(ans.get("message"))}
            continue
        keys = ans.get("keys", [])
        out[host] = {
            "keys": sorted(str(k.get("name")) for k in keys if isinstance(k, dict)),
            "problems": ans.get("problems", {}),
        }
    return out


@click.group(name="fence")
def fence() -> None:
    """Guest-cluster fencing through the host layer (fence_kvmha, the listeners)."""


@fence.command(name="init")
@click.option("--node", help="This host's node name (default: found in corosync's nodelist).")
@click.option(
    "--secret-file",
    type=click.Path(path_type=Path),
    help="Take the hosts' secret from this copy of another host's hosts.key.",
)
@click.option("--force", is_flag=True, help="Replace an existing hosts' secret.")
@click.option(
    "--corosync-conf",
    type=click.Path(path_type=Path),
    default=COROSYNC_CONF,
    show_default=True,
    hidden=True,
)
@click.option(
    "--authkey",
    type=click.Path(path_type=Path),
    default=COROSYNC_AUTHKEY,
    show_default=True,
    hidden=True,
)
@json_option
@config_option
def init(
    node: Optional[str],
    secret_file: Optional[Path],
    force: bool,
    corosync_conf: Path,
    authkey: Path,
    as_json: bool,
    config_path: Path,
) -> None:
    """Set up this host's fence listener: the hosts' secret and listener.conf."""
    conf = _read_corosync(corosync_conf)
    host = _this_node(conf["nodes"], node)
    fence_dir = config_path.parent
    old: Optional[Config] = None
    if config_path.exists():
        try:
            old = Config.load(str(config_path))
        except SystemExit as exc:
            raise KvmhaError(str(exc), f"fix or remove {config_path}") from exc
    cfg = old or Config(host=host)
    if old is None:
        cfg.keys_dir = str(fence_dir / "keys")
        cfg.host_key = str(fence_dir / "hosts.key")
    cfg.host = host
    # peers: corosync's nodelist as it is now (rerun init after 'pcs cluster node add')
    cfg.peers = {n["name"]: (n["ring0_addr"], cfg.port) for n in conf["nodes"]}
    key_name = "@" + (re.sub(r"[^A-Za-z0-9_.-]", "-", conf["cluster_name"]) or "hosts")[:60]
    hk_path = Path(cfg.host_key)
    source = "existing"
    secret: Optional[bytes] = None
    if hk_path.exists() and not force:
        try:
            secret = load_host_key(str(hk_path)).secret
        except KeyFileError as exc:
            raise KvmhaError(str(exc), "fix its mode, or replace it with --force") from exc
    else:
        if secret_file is not None:
            try:
                secret = load_host_key(str(secret_file)).secret
            except KeyFileError as exc:
                raise UsageError(str(exc), "give a copy of a host's hosts.key (0600)") from exc
            source = str(secret_file)
        else:
            try:
                secret = hosts_secret_from_authkey(authkey.read_bytes())
            except OSError as exc:
                raise KvmhaError(
                    f"cannot read {authkey}: {exc.strerror}",
                    "set up the host cluster first (pcs cluster setup copies the authkey)",
                ) from exc
            except KeyFileError as exc:
                raise KvmhaError(str(exc), "pcs cluster authkey corosync") from exc
            source = str(authkey)
    from kvmha.pcmk import ClusterNotRunning

    try:
        cib = _check_fingerprint(secret, publish=True)
    except ClusterNotRunning:
        cib = "not checked (the cluster is not running here)"
    created = source != "existing"
    for d, mode in ((fence_dir, 0o750), (Path(cfg.keys_dir), 0o700)):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, mode)
    if created:
        write_private(hk_path, agent.key_text(key_name, secret))
    text = config_text(cfg)
    text = text.replace(
        "[peers]\n",
        "# [peers]: written by 'kvmha fence init' from corosync's nodelist\n[peers]\n",
    )
    changed = not config_path.exists() or config_path.read_text(encoding="utf-8") != text
    if changed:
        tmp = config_path.with_name(f".{config_path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o640)
        os.replace(tmp, config_path)
    data = {
        "host": host,
        "config": {"path": str(config_path), "changed": changed},
        "hosts_key": {
            "path": str(hk_path),
            "created": created,
            "source": source,
            "fingerprint": fingerprint(secret),
        },
        "cib": cib,
        "peers": {h: f"{a}:{p}" for h, (a, p) in sorted(cfg.peers.items())},
    }

    def text_out() -> None:
        verb = "wrote" if changed else "unchanged:"
        click.echo(f"{verb} {config_path} (host {host}, {len(cfg.peers)} listener(s))")
        how = f"from {source}" if created else "kept"
        click.echo(f"hosts' secret {hk_path}: {how}, fingerprint {fingerprint(secret)[:12]}")
        click.echo(f"CIB: {cib}")
        click.echo("next: systemctl enable --now kvmha-fence-listener")

    emit(as_json, "fence-init", data, text_out)


@fence.group(name="key")
def key() -> None:
    """Keys of guest clusters: their scopes, generations and revocation (in the CIB)."""


def parse_duration(text: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not m:
        raise UsageError(f"bad duration {text!r}", "use e.g. 90s, 30m, 24h or 7d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _guest_copy(cfg: Config, host_key: agent.Key, meta: KeyMeta, gen: int) -> str:
    return agent.key_text(
        wire_name(meta.name, gen), derive_guest_secret(host_key.secret, meta.name, gen)
    )


def _guest_help(cfg: Config, guest_text: str, out: Optional[Path]) -> None:
    addrs = ",".join(a for h, a, _p in _listeners(cfg) if a != "127.0.0.1")
    click.echo("\nOn every node of the guest cluster:")
    if out is None:
        click.echo(f"  install -m 0600 /dev/stdin {agent.DEFAULT_KEY_FILE} <<'EOF'")
        click.echo("  " + guest_text.replace("\n", "\n  ").rstrip())
        click.echo("  EOF")
    else:
        click.echo(f"  install -m 0600 {out.name} {agent.DEFAULT_KEY_FILE}")
    click.echo("Then, once, in the guest cluster:")
    click.echo(
        f"  pcs stonith create fence-kvmha fence_kvmha ip={addrs} "
        f"key_file={agent.DEFAULT_KEY_FILE} pcmk_host_map='NODE1:DOMAIN1;NODE2:DOMAIN2'"
    )


def _write_guest_copy(cfg: Config, host_key: agent.Key, meta: KeyMeta, out: Optional[Path]) -> str:
    """The guests' copy of meta's current generation; written to out (0600) when given."""
    text = _guest_copy(cfg, host_key, meta, meta.generation)
    if out is not None:
        write_private(out, text)
    return text


def _wait_served(
    cfg: Config, host_key: agent.Key, wire: str, present: bool, seconds: float
) -> dict[str, Any]:
    """Per listener: does it accept `wire` (present) or refuse it (not present) yet?"""
    deadline = time.monotonic() + seconds
    while True:
        served = _served(cfg, host_key)
        rows = {}
        for h, r in served.items():
            if "error" in r:
                rows[h] = "unreachable (it reads the CIB when it is back)"
            else:
                rows[h] = "accepts" if wire in r["keys"] else "refuses"
        want = "accepts" if present else "refuses"
        if all(v == want or v.startswith("unreachable") for v in rows.values()):
            return rows
        if time.monotonic() >= deadline:
            return rows
        time.sleep(0.3)


def _meta_or_fail(keys: dict[str, KeyMeta], name: str) -> KeyMeta:
    meta = keys.get(name)
    if meta is None:
        raise UsageError(f"no key {name!r} in the cluster", "see 'kvmha fence key list'")
    return meta


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _audit(cfg: Config, **fields: Any) -> None:
    """The key change in this host's audit log, with the listeners' events."""
    from kvmha.fence.audit import Audit

    a = Audit(cfg.audit_log, cfg.host, cfg.syslog)
    if a.sink == "stderr":  # the command's own output says it; the file keeps the record
        a.log.handlers.clear()
    try:
        a.event(origin=_who(), **fields)
    finally:
        a.close()


@key.command(name="create")
@click.argument("name")
@click.option("--domains", help="Comma separated libvirt names or UUIDs the key may fence.")
@click.option("--tag", help="A Pacemaker tag of the host cluster: its guests.")
@click.option("--dc", help="A data centre: guests whose resource has kvmha-dc=DC.")
@click.option("--expires", help="Refuse the key after this long (e.g. 90d); default never.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Also write the guests' copy of the key to this file (mode 0600).",
)
@json_option
@config_option
def key_create(
    name: str,
    domains: Optional[str],
    tag: Optional[str],
    dc: Optional[str],
    expires: Optional[str],
    out: Optional[Path],
    as_json: bool,
    config_path: Path,
) -> None:
    """Create key NAME in the cluster (every listener, now and later), print the guests' copy."""
    given = {k: v for k, v in (("domains", domains), ("tag", tag), ("dc", dc)) if v}
    if len(given) != 1:
        raise UsageError("give exactly one scope", "use --domains D1,D2 or --tag TAG or --dc DC")
    try:
        check_name(name)
        scope = Scope.parse(given, "the scope")
    except KeyFileError as exc:
        raise UsageError(str(exc), "see 'kvmha fence key create --help'") from exc
    if len(name) > CIB_NAME_MAX:
        raise UsageError(f"key name {name!r} is too long", f"use at most {CIB_NAME_MAX} characters")
    cfg, host_key = _load(config_path)
    _check_fingerprint(host_key.secret, publish=True)
    keys, _fp = _cib_keys()
    meta = keys.get(name)
    if meta is not None:
        if meta.revoked is not None:
            raise UsageError(
                f"key {name!r} was revoked; a revoked name is never used again",
                "create the key under another name",
            )
        if meta.scope != scope:
            raise UsageError(
                f"key {name!r} exists with scope {meta.scope.describe()}",
                f"revoke it first ('kvmha fence key revoke {name}') or choose another name",
            )
        state = "exists"
    else:
        now = int(time.time())
        exp = now + parse_duration(expires) if expires else None
        meta = KeyMeta(name, scope, 1, now, expires=exp)
        _cib_write(CIB_KEY_PREFIX + name, meta.to_json())
        _audit(cfg, key=name, action="key-create", target=scope.describe(), result="ok")
        state = "created"
    wire = wire_name(name, meta.generation)
    rows = _wait_served(cfg, host_key, wire, True, 5.0)
    guest_text = _write_guest_copy(cfg, host_key, meta, out)
    data = {
        "action": "create",
        "key": name,
        "state": state,
        "wire_name": wire,
        "meta": meta.as_dict(),
        "listeners": rows,
        "guest_key_file": str(out) if out else None,
    }
    schema = "fence-key"

    def text_out() -> None:
        click.echo(f"key {wire} ({scope.describe()}): {state}")
        for h, v in rows.items():
            click.echo(f"  {h:10} {v}")
        if out is not None:
            click.echo(f"wrote the guests' key to {out} (mode 0600)")
        _guest_help(cfg, guest_text, out)

    emit(as_json, schema, data, text_out)
    bad = [h for h, v in rows.items() if v == "refuses"]
    if bad:
        fail_after_report(
            as_json,
            f"the listener(s) on {', '.join(bad)} do not accept {wire}",
            "check 'kvmha fence key list' and their logs (journalctl -u kvmha-fence-listener)",
        )


@key.command(name="list")
@json_option
@config_option
def key_list(as_json: bool, config_path: Path) -> None:
    """The cluster's keys, and which ones every listener accepts now."""
    cfg, host_key = _load(config_path)
    keys, _fp = _cib_keys()
    served = _served(cfg, host_key)
    now = time.time()
    rows = []
    for name, meta in sorted(keys.items()):
        d = meta.as_dict(now)
        accepted = [wire_name(name, g) for g in meta.accepted(now)]
        d["listeners"] = {
            h: ("unreachable" if "error" in r else sorted(set(accepted) & set(r["keys"])))
            for h, r in served.items()
        }
        rows.append(d)
    files = sorted({k for r in served.values() for k in r.get("keys", []) if ":" not in k})
    data = {"keys": rows, "file_keys": files, "listeners": served}
    schema = "fence-key-list"

    def text_out() -> None:
        click.echo(f"{'KEY':20} {'STATE':8} {'GEN':>3} {'SCOPE':28} ACCEPTED BY")
        for d in rows:
            by = [h for h, v in d["listeners"].items() if v and v != "unreachable"]
            click.echo(
                f"{d['name']:20} {d['state']:8} {d['generation']:>3} {d['scope']:28} "
                f"{','.join(by) or '-'}"
            )
        for f in files:
            click.echo(f"{f:20} {'file':8} {'-':>3} {'(a key file on some hosts)':28}")
        for host, r in served.items():
            if "error" in r:
                click.echo(f"{host}: no answer ({r['error']})", err=True)
            for path, why in r.get("problems", {}).items():
                click.echo(f"{host}: refused {path}: {why}", err=True)

    emit(as_json, schema, data, text_out)


@key.command(name="show")
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), help="Write the guests' copy here (0600).")
@json_option
@config_option
def key_show(name: str, out: Optional[Path], as_json: bool, config_path: Path) -> None:
    """Key NAME's metadata and the guests' copy of its current generation."""
    cfg, host_key = _load(config_path)
    _check_fingerprint(host_key.secret, publish=False)
    keys, _fp = _cib_keys()
    meta = _meta_or_fail(keys, name)
    text = _write_guest_copy(cfg, host_key, meta, out)
    data = {"key": name, "meta": meta.as_dict(), "guest_key_text": None if out else text}
    schema = "fence-key-show"

    def text_out() -> None:
        for k, v in meta.as_dict().items():
            click.echo(f"{k:22} {v}")
        if out is not None:
            click.echo(f"wrote the guests' key to {out} (mode 0600)")
        else:
            _guest_help(cfg, text, None)

    emit(as_json, schema, data, text_out)


@key.command(name="revoke")
@click.argument("name")
@json_option
@config_option
def key_revoke(name: str, as_json: bool, config_path: Path) -> None:
    """Revoke key NAME on every host at once (in the CIB); wait until the listeners refuse it."""
    cfg, host_key = _load(config_path)
    keys, _fp = _cib_keys()
    meta = _meta_or_fail(keys, name)
    if meta.revoked is None:
        import dataclasses

        meta = dataclasses.replace(meta, revoked=int(time.time()), revoked_by=_who())
        _cib_write(CIB_KEY_PREFIX + name, meta.to_json())
        _audit(cfg, key=name, action="key-revoke", target=meta.scope.describe(), result="ok")
        state = "revoked"
    else:
        state = "already revoked"
    rows: dict[str, str] = {}
    for gen in {meta.generation, meta.previous or meta.generation}:
        for h, v in _wait_served(cfg, host_key, wire_name(name, gen), False, REVOKE_WAIT).items():
            if rows.get(h) != "accepts":
                rows[h] = v
    data = {
        "action": "revoke",
        "key": name,
        "state": state,
        "meta": meta.as_dict(),
        "listeners": rows,
    }
    schema = "fence-key"

    def text_out() -> None:
        click.echo(f"key {name}: {state}")
        for h, v in rows.items():
            click.echo(f"  {h:10} {v}")

    emit(as_json, schema, data, text_out)
    bad = [h for h, v in rows.items() if v == "accepts"]
    if bad:
        fail_after_report(
            as_json,
            f"the listener(s) on {', '.join(bad)} still accept {name}",
            "their CIB is behind: check 'pcs status' there, or stop the listener",
        )


@key.command(name="rotate")
@click.argument("name")
@click.option(
    "--overlap",
    default=DEFAULT_OVERLAP,
    show_default=True,
    help="How long the old generation is still accepted.",
)
@click.option("--out", type=click.Path(path_type=Path), help="Write the new guests' copy here.")
@json_option
@config_option
def key_rotate(
    name: str, overlap: str, out: Optional[Path], as_json: bool, config_path: Path
) -> None:
    """A new generation of key NAME; the old one keeps working for --overlap."""
    cfg, host_key = _load(config_path)
    _check_fingerprint(host_key.secret, publish=False)
    keys, _fp = _cib_keys()
    meta = _meta_or_fail(keys, name)
    if meta.revoked is not None:
        raise UsageError(f"key {name!r} is revoked", "create a key under another name")
    now = int(time.time())
    if meta.previous_until is not None and now < meta.previous_until:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(meta.previous_until))
        raise UsageError(
            f"key {name!r} is still in the overlap of its last rotation (generation "
            f"{meta.previous} accepted until {until} UTC)",
            "update the guests to the current generation and rotate after that",
        )
    import dataclasses

    seconds = parse_duration(overlap)
    meta = dataclasses.replace(
        meta,
        generation=meta.generation + 1,
        previous=meta.generation,
        previous_until=now + seconds,
    )
    _cib_write(CIB_KEY_PREFIX + name, meta.to_json())
    _audit(
        cfg,
        key=name,
        action="key-rotate",
        target=meta.scope.describe(),
        result="ok",
        detail=f"generation {meta.generation}, {meta.previous} accepted for {seconds} s",
    )
    wire = wire_name(name, meta.generation)
    rows = _wait_served(cfg, host_key, wire, True, 5.0)
    text = _write_guest_copy(cfg, host_key, meta, out)
    data = {
        "action": "rotate",
        "key": name,
        "wire_name": wire,
        "meta": meta.as_dict(),
        "listeners": rows,
    }
    schema = "fence-key"

    def text_out() -> None:
        click.echo(
            f"key {name}: generation {meta.generation}; generation {meta.previous} is "
            f"accepted for {seconds} s more"
        )
        for h, v in rows.items():
            click.echo(f"  {h:10} {v}")
        _guest_help(cfg, text, out)

    emit(as_json, schema, data, text_out)


@key.command(name="sync")
@json_option
@config_option
def key_sync(as_json: bool, config_path: Path) -> None:
    """Check that every listener accepts exactly the cluster's keys; push file keys."""
    cfg, host_key = _load(config_path)
    _check_fingerprint(host_key.secret, publish=True)
    keys, _fp = _cib_keys()
    now = time.time()
    want = {wire_name(n, g) for n, m in keys.items() for g in m.accepted(now)}
    store = KeyStore(cfg.keys_dir, lambda _m: None)
    pushed: dict[str, list[str]] = {}
    served = _served(cfg, host_key)
    for host, addr, port in _listeners(cfg):
        r = served.get(host, {})
        if host == cfg.host or "error" in r:
            continue
        for sk in store.all():  # legacy key files of this host that a peer lacks
            if sk.key.name in r["keys"]:
                continue
            nonce = os.urandom(16)
            body = {
                "action": "install-key",
                "name": sk.key.name,
                "scope": sk.scope.as_fields(),
                "nonce": nonce.hex(),
                "wrapped": wrap_secret(host_key.secret, nonce, sk.key.secret).hex(),
            }
            try:
                ans = agent.exchange(addr, port, host_key, body, 3, 10)
            except agent.ProtocolError:
                continue
            if ans.get("status") == "ok":
                pushed.setdefault(host, []).append(sk.key.name)
    served = _served(cfg, host_key) if pushed else served
    report: dict[str, Any] = {}
    for host, r in served.items():
        if "error" in r:
            report[host] = {"state": "unreachable", "error": r["error"]}
            continue
        have = {k for k in r["keys"] if ":" in k}
        report[host] = {
            "state": "in sync" if have == want else "differs",
            "missing": sorted(want - have),
            "extra": sorted(have - want),
        }
    data = {"keys": sorted(want), "listeners": report, "pushed_file_keys": pushed}
    schema = "fence-key-sync"

    def text_out() -> None:
        for h, r in report.items():
            extra = "".join(f"; {k}: {', '.join(r[k])}" for k in ("missing", "extra") if r.get(k))
            click.echo(f"{h:10} {r['state']}{extra}")
        for h, names in pushed.items():
            click.echo(f"{h:10} pushed key file(s): {', '.join(names)}")

    emit(as_json, schema, data, text_out)
    if any(r["state"] == "differs" for r in report.values()):
        fail_after_report(
            as_json,
            "some listeners do not accept exactly the cluster's keys",
            "check their hosts' secret ('kvmha fence init' there) and 'pcs status'",
        )


@fence.command(name="test")
@click.argument("domain")
@click.option(
    "--key",
    "key_file",
    type=click.Path(path_type=Path),
    help="A guest cluster's key file: test with its scope (default: the hosts' key).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def test(domain: str, key_file: Optional[Path], as_json: bool, config_path: Path) -> None:
    """A status request for DOMAIN through every listener, as a guest cluster makes it."""
    cfg, host_key = _load(config_path)
    try:
        k = agent.Key.load(str(key_file)) if key_file else host_key
    except KeyFileError as exc:
        raise UsageError(str(exc), "give a key file with mode 0600") from exc
    rows: list[dict[str, Any]] = []
    for host, addr, port in _listeners(cfg):
        t0 = time.monotonic()
        try:
            ans = agent.exchange(addr, port, k, {"action": "status", "plug": domain}, 3, 30)
        except agent.ProtocolError as exc:
            ans = {"status": "error", "message": str(exc)}
        rows.append(
            {
                "listener": host,
                "address": f"{addr}:{port}",
                "status": ans.get("status"),
                "state": ans.get("state"),
                "hosts": ans.get("hosts"),
                "message": ans.get("message"),
                "seconds": round(time.monotonic() - t0, 4),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            if r["status"] == "ok":
                on = f" on {','.join(r['hosts'])}" if r["hosts"] else ""
                what = f"{domain} is {r['state']}{on}"
            else:
                what = f"{r['status']}: {r['message']}"
            ms = float(r["seconds"]) * 1000
            click.echo(f"{r['listener']:8} {r['address']:22} {ms:7.1f} ms  {what}")
    if any(r["status"] != "ok" for r in rows):
        fail_after_report(
            as_json,
            f"not every listener could answer for {domain}",
            "see the messages above; 'kvmha doctor' checks the listeners",
        )


def main() -> None:
    """Standalone entry (python3 -m kvmha.tools.fence_cli ...)."""
    from kvmha.tools.clibase import Group

    root = Group(name="kvmha", commands={"fence": fence})
    root(prog_name="kvmha")


if __name__ == "__main__":
    main()
