"""``kvmha fence``: guest-cluster keys and an end-to-end check of the fence listeners.

Run on a host (it reads the listener's configuration and the hosts' key):

    kvmha fence key create NAME (--domains D1,D2 | --tag TAG | --dc DC) [--out FILE]
    kvmha fence key list [--json]
    kvmha fence test DOMAIN [--key FILE] [--json]
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import click

from kvmha.errors import KvmhaError, UsageError
from kvmha.fence import agent
from kvmha.fence.keys import (
    KeyFileError,
    KeyStore,
    Scope,
    check_name,
    load_host_key,
    new_secret,
    write_private,
)
from kvmha.fence.listener import DEFAULT_CONFIG, Config, wrap_secret

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    envvar="KVMHA_FENCE_CONFIG",
    help="The fence listener's configuration on this host.",
)


def _load(config_path: Path) -> tuple[Config, agent.Key]:
    if not config_path.exists():
        raise KvmhaError(
            f"{config_path} does not exist: this is not a configured kvmha host",
            "run this on a host with kvmha-fence-listener set up",
        )
    try:
        cfg = Config.load(str(config_path))
    except SystemExit as exc:
        raise KvmhaError(str(exc)) from exc
    try:
        return cfg, load_host_key(cfg.host_key)
    except KeyFileError as exc:
        raise KvmhaError(str(exc), f"check {cfg.host_key}") from exc


def _listeners(cfg: Config) -> list[tuple[str, str, int]]:
    """(host, address, port) of every listener, this host's first."""
    peers = sorted(cfg.peers.items(), key=lambda kv: (kv[0] != cfg.host, kv[0]))
    out = [(h, a, p) for h, (a, p) in peers]
    if cfg.host not in cfg.peers:
        out.insert(0, (cfg.host, "127.0.0.1", cfg.port))
    return out


@click.group(name="fence")
def fence() -> None:
    """Guest-cluster fencing through the host layer (fence_kvmha, the listeners)."""


@fence.group(name="key")
def key() -> None:
    """Keys of guest clusters and their scopes."""


@key.command(name="create")
@click.argument("name")
@click.option("--domains", help="Comma separated libvirt names or UUIDs the key may fence.")
@click.option("--tag", help="A Pacemaker tag of the host cluster: its guests.")
@click.option("--dc", help="A data centre: guests whose resource has kvmha-dc=DC.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Also write the guests' copy of the key to this file (mode 0600).",
)
@config_option
def key_create(
    name: str,
    domains: Optional[str],
    tag: Optional[str],
    dc: Optional[str],
    out: Optional[Path],
    config_path: Path,
) -> None:
    """Create key NAME, register its scope with every listener, print what guests need."""
    given = {k: v for k, v in (("domains", domains), ("tag", tag), ("dc", dc)) if v}
    if len(given) != 1:
        raise UsageError("give exactly one scope", "use --domains D1,D2 or --tag TAG or --dc DC")
    try:
        check_name(name)
        scope = Scope.parse(given, "the scope")
    except KeyFileError as exc:
        raise UsageError(str(exc)) from exc
    cfg, host_key = _load(config_path)
    store = KeyStore(cfg.keys_dir, lambda _m: None)
    if store.get(name) is not None:
        raise UsageError(f"key {name!r} exists already", f"see {cfg.keys_dir}/{name}.key")
    secret = new_secret()
    store.install(name, secret, scope)
    failed = []
    for host, addr, port in _listeners(cfg):
        if host == cfg.host:
            continue
        nonce = os.urandom(16)
        body = {
            "action": "install-key",
            "name": name,
            "scope": scope.as_fields(),
            "nonce": nonce.hex(),
            "wrapped": wrap_secret(host_key.secret, nonce, secret).hex(),
        }
        try:
            ans = agent.exchange(addr, port, host_key, body, 3, 10)
        except agent.ProtocolError as exc:
            failed.append(f"{host}: {exc}")
            continue
        if ans.get("status") != "ok":
            failed.append(f"{host}: {ans.get('message')}")
    guest_text = agent.key_text(name, secret)
    if out is not None:
        write_private(out, guest_text)
        click.echo(f"wrote the guests' key to {out} (mode 0600)")
    click.echo(f"key {name}: {scope.describe()}; registered on {cfg.host}", nl=False)
    click.echo(f" and {len(_listeners(cfg)) - 1 - len(failed)} other listener(s)")
    for f in failed:
        click.echo(f"warning: not registered on {f}", err=True)
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
    if failed:
        raise KvmhaError(
            f"key {name} is not registered on {len(failed)} listener(s)",
            "copy it to their keys directory by hand, or rerun when they are up",
        )


@key.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def key_list(as_json: bool, config_path: Path) -> None:
    """The keys every listener knows, with their scopes."""
    cfg, host_key = _load(config_path)
    result: dict[str, Any] = {}
    for host, addr, port in _listeners(cfg):
        try:
            ans = agent.exchange(addr, port, host_key, {"action": "keys"}, 3, 10)
            result[host] = {"keys": ans.get("keys", []), "problems": ans.get("problems", {})}
        except agent.ProtocolError as exc:
            result[host] = {"error": str(exc)}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    names: dict[str, dict[str, str]] = {}
    for host, r in result.items():
        for k in r.get("keys", []):
            names.setdefault(k["name"], {})[host] = k["scope"]
    click.echo(f"{'KEY':16} {'SCOPE':32} LISTENERS")
    for name, per_host in sorted(names.items()):
        scopes = set(per_host.values())
        scope = scopes.pop() if len(scopes) == 1 else "DIFFERS: " + ", ".join(sorted(scopes))
        click.echo(f"{name:16} {scope:32} {','.join(sorted(per_host))}")
    for host, r in result.items():
        if "error" in r:
            click.echo(f"{host}: no answer ({r['error']})", err=True)
        for path, why in r.get("problems", {}).items():
            click.echo(f"{host}: refused {path}: {why}", err=True)


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
        raise UsageError(str(exc)) from exc
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
        raise KvmhaError(f"not every listener could answer for {domain}")


def main() -> None:
    """Standalone entry (until 'kvmha fence' is registered in the kvmha command)."""
    from kvmha.tools.clibase import Group

    root = Group(name="kvmha", commands={"fence": fence})
    root(prog_name="kvmha")


if __name__ == "__main__":
    main()
