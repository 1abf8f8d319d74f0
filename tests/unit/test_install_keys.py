"""Key lifecycle (#13): KeyStore re-checks key files, CIB keys (derived secrets, revocation,
rotation overlap, expiry, fail closed), and `kvmha fence init/key ...` against three real
listeners on loopback with a CIB held in memory."""

from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.schema import validate

from kvmha.fence import agent
from kvmha.fence.keys import (
    CIB_KEY_PREFIX,
    KeyMeta,
    KeyStore,
    Scope,
    derive_guest_secret,
    fingerprint,
    hosts_secret_from_authkey,
    parse_cib_keys,
    wire_name,
    write_private,
)
from kvmha.tools import fence_cli

from .test_fence_fakes import HOST_KEY, Lab, agent_args, run_agent, start_lab, stop_lab

SCOPE = Scope("domains", ("guest1",))


class FakeCib:
    """crm_config's kvmha-fence-keys set, as cibadmin would keep it."""

    def __init__(self) -> None:
        self.nv: dict[str, str] = {}
        self.fail = False

    def element(self) -> ET.Element:
        if self.fail:
            raise OSError("cibadmin: Could not connect to the CIB")
        cfg = ET.Element("crm_config")
        ps = ET.SubElement(cfg, "cluster_property_set", id="kvmha-fence-keys")
        for n, v in self.nv.items():
            ET.SubElement(ps, "nvpair", id=f"kvmha-fence-keys-{n}", name=n, value=v)
        return cfg

    def put(self, meta: KeyMeta) -> None:
        self.nv[CIB_KEY_PREFIX + meta.name] = meta.to_json()


def store_with(cib: FakeCib, tmp: Path, now: list[float], warn: Any = None) -> KeyStore:
    (tmp / "keys").mkdir(exist_ok=True)
    return KeyStore(
        str(tmp / "keys"),
        warn or (lambda _m: None),
        HOST_KEY.secret,
        cib.element,
        ttl=0.0,
        clock=lambda: now[0],
    )


# ---- key files -----------------------------------------------------------------------
def test_key_file_chmod_0644_stops_working_at_once(tmp_path: Path) -> None:
    warnings: list[str] = []
    store = KeyStore(str(tmp_path), warnings.append)
    path = store.install("gc", b"s" * 32, SCOPE)
    assert store.get("gc") is not None
    dir_mtime = os.stat(tmp_path).st_mtime_ns
    os.chmod(path, 0o644)  # the directory does not change, only the file's mode
    assert os.stat(tmp_path).st_mtime_ns == dir_mtime
    assert store.get("gc") is None
    assert "0644" in store.problems()[str(path)] and any("0644" in w for w in warnings)
    os.chmod(path, 0o600)
    assert store.get("gc") is not None


def test_key_file_rewritten_in_place_is_read_again(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path), lambda _m: None)
    path = store.install("gc", b"a" * 32, SCOPE)
    assert store.get("gc").key.secret == b"a" * 32  # type: ignore[union-attr]
    with open(path, "r+", encoding="utf-8") as f:  # same inode, same directory
        text = f.read().replace("61" * 32, "62" * 32)
        f.seek(0)
        f.write(text)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert store.get("gc").key.secret == b"b" * 32  # type: ignore[union-attr]


def test_file_key_names_cannot_look_like_cib_keys(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path), lambda _m: None)
    write_private(tmp_path / "gc:1.key", agent.key_text("gc:1", b"x" * 32, {"domains": "a"}))
    assert store.get("gc:1") is None
    assert store.all() == []


# ---- CIB keys ------------------------------------------------------------------------
def test_cib_key_secret_is_derived_and_never_stored(tmp_path: Path) -> None:
    cib, now = FakeCib(), [1000.0]
    cib.put(KeyMeta("gc", SCOPE, 1, 1000))
    store = store_with(cib, tmp_path, now)
    sk = store.get("gc:1")
    assert sk is not None and sk.scope == SCOPE
    assert sk.key.secret == derive_guest_secret(HOST_KEY.secret, "gc", 1)
    assert sk.key.secret.hex() not in ET.tostring(cib.element(), encoding="unicode")
    assert derive_guest_secret(b"other" * 8, "gc", 1) != sk.key.secret
    assert store.get("gc:2") is None and store.get("gc") is None


def test_revoked_and_expired_keys_are_refused_with_the_reason(tmp_path: Path) -> None:
    cib, now, warnings = FakeCib(), [1000.0], []
    cib.put(KeyMeta("gc", SCOPE, 1, 1000, expires=2000))
    store = store_with(cib, tmp_path, now, warnings.append)
    assert store.get("gc:1") is not None
    now[0] = 2000.0
    assert store.get("gc:1") is None and "expired" in warnings[-1]
    cib.put(KeyMeta("gc", SCOPE, 1, 1000, revoked=1500, revoked_by="root@host1"))
    now[0] = 1600.0
    assert store.get("gc:1") is None and "revoked" in warnings[-1]


def test_rotation_overlap_old_and_new_then_only_new(tmp_path: Path) -> None:
    cib, now = FakeCib(), [1000.0]
    cib.put(KeyMeta("gc", SCOPE, 2, 900, previous=1, previous_until=1100))
    store = store_with(cib, tmp_path, now)
    assert store.get("gc:1") is not None and store.get("gc:2") is not None
    assert [k.key.name for k in store.all()] == ["gc:1", "gc:2"]
    now[0] = 1100.0
    assert store.get("gc:1") is None and store.get("gc:2") is not None
    assert [k.key.name for k in store.all()] == ["gc:2"]


def test_unreadable_cib_fails_closed(tmp_path: Path) -> None:
    cib, now = FakeCib(), [1000.0]
    cib.put(KeyMeta("gc", SCOPE, 1, 1000))
    store = store_with(cib, tmp_path, now)
    assert store.get("gc:1") is not None
    cib.fail = True
    assert store.get("gc:1") is None
    assert "CIB" in store.problems()["cib"]


def test_malformed_metadata_is_a_problem_not_a_key() -> None:
    cfg = ET.fromstring(
        '<crm_config><cluster_property_set id="kvmha-fence-keys">'
        '<nvpair id="a" name="kvmha-fence-key-bad" value="{&quot;v&quot;:1}"/>'
        '<nvpair id="b" name="kvmha-fence-key-x" value="not json"/>'
        "</cluster_property_set></crm_config>"
    )
    keys, problems, fp = parse_cib_keys(cfg)
    assert keys == {} and set(problems) == {"cib:bad", "cib:x"} and fp is None


def test_hosts_secret_from_the_corosync_authkey() -> None:
    a, b = os.urandom(256), os.urandom(256)
    assert hosts_secret_from_authkey(a) == hosts_secret_from_authkey(a)
    assert hosts_secret_from_authkey(a) != hosts_secret_from_authkey(b)
    assert hosts_secret_from_authkey(a) != a[:32]
    assert fingerprint(hosts_secret_from_authkey(a)) != fingerprint(hosts_secret_from_authkey(b))


def test_corosync_conf_parser() -> None:
    text = (
        "totem {\n version: 2\n cluster_name: prod # comment\n"
        " interface {\n  linknumber: 0\n }\n}\n"
        "nodelist {\n node {\n  ring0_addr: 10.0.0.11\n  name: host1\n  nodeid: 1\n }\n"
        " node {\n  ring0_addr: 10.0.0.12\n  name: host2\n  nodeid: 2\n }\n}\n"
    )
    conf = fence_cli.parse_corosync_conf(text)
    assert conf["cluster_name"] == "prod"
    assert [(n["name"], n["ring0_addr"]) for n in conf["nodes"]] == [
        ("host1", "10.0.0.11"),
        ("host2", "10.0.0.12"),
    ]


# ---- the CLI against three real listeners --------------------------------------------
@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Lab, FakeCib, Path]]:
    lab = start_lab(tmp_path / "lab")
    cib = FakeCib()
    for lst in lab.listeners.values():
        lst.keys.cib = cib.element
        lst.keys.ttl = 0.0

    def write(name: str, value: str) -> None:
        cib.nv[name] = value

    monkeypatch.setattr(fence_cli, "pacemaker_cib", cib.element)
    monkeypatch.setattr(fence_cli, "_cib_write", write)
    conf = tmp_path / "etc" / "listener.conf"
    conf.parent.mkdir()
    write_private(conf.parent / "hosts.key", agent.key_text(HOST_KEY.name, HOST_KEY.secret))
    cfg = lab.listeners["host1"].cfg
    peers = "".join(f"{h} = 127.0.0.1:{p}\n" for h, p in lab.ports.items())
    conf.write_text(
        f"[listener]\nhost = host1\nport = {lab.ports['host1']}\n"
        f"host_key = {conf.parent / 'hosts.key'}\nkeys_dir = {cfg.keys_dir}\n"
        f"audit_log = {tmp_path / 'cli-audit.log'}\nsyslog = no\n[peers]\n{peers}"
    )
    try:
        yield lab, cib, conf
    finally:
        stop_lab(lab)


def invoke(*args: str) -> tuple[int, str, str]:
    """`kvmha fence ARGS` as the CLI runs it: exit code, stdout, stderr."""
    from kvmha.tools.clibase import Group

    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        runner = CliRunner()
    r = runner.invoke(Group(name="kvmha", commands={"fence": fence_cli.fence}), ["fence", *args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def cli(conf: Path, *args: str) -> tuple[int, Any, str]:
    rc, out, err = invoke(*args, "--config", str(conf), "--json")
    try:
        data = json.loads(out)
    except ValueError:
        data = None
    if data is not None:
        validate(data)  # every document against its published schema (docs/schemas)
    return rc, data, err


def test_create_is_served_everywhere_revoke_is_refused_everywhere(
    world: tuple[Lab, FakeCib, Path], tmp_path: Path
) -> None:
    lab, cib, conf = world
    lab.world.add("guest1", "host2")
    out = tmp_path / "guest.key"
    rc, data, err = cli(conf, "key", "create", "gc", "--domains", "guest1", "--out", str(out))
    assert rc == 0, err
    assert data["schema"] == "kvmha.fence-key.v1" and data["wire_name"] == "gc:1"
    assert data["state"] == "created"
    assert set(data["listeners"].values()) == {"accepts"}
    assert "secret" not in cib.nv[CIB_KEY_PREFIX + "gc"]
    # idempotent: the same again changes nothing
    rc, again, err = cli(conf, "key", "create", "gc", "--domains", "guest1")
    assert rc == 0 and again["state"] == "exists", err
    # a different scope is refused with the fix
    rc, _out, err = invoke("key", "create", "gc", "--tag", "t", "--config", str(conf))
    assert rc == 2 and "fix: revoke it first" in err and len(err.splitlines()) == 2
    for h in lab.listeners:  # the guest's copy works through every listener
        rc_a, o, e = run_agent(agent_args(lab, out, "status", "guest1", hosts=[h]))
        assert (rc_a, o.strip()) == (0, "Status: ON"), (h, e)
    rc, data, err = cli(conf, "key", "revoke", "gc")
    assert rc == 0 and data["state"] == "revoked", err
    assert set(data["listeners"].values()) == {"refuses"}
    for h in lab.listeners:
        rc_a, _o, e = run_agent(agent_args(lab, out, "status", "guest1", hosts=[h]))
        assert rc_a == 1 and "unknown key" in e, (h, e)
    rc, data, _ = cli(conf, "key", "revoke", "gc")
    assert rc == 0 and data["state"] == "already revoked"
    audit = [json.loads(x) for x in (tmp_path / "cli-audit.log").read_text().splitlines()]
    assert [a["action"] for a in audit] == ["key-create", "key-revoke"]
    assert all(a["origin"] and a["key"] == "gc" for a in audit)
    refused = [e for e in lab.all_audit() if e.get("key") == "gc:1" and e["result"] == "refused"]
    assert len(refused) >= 3


def test_rotate_overlap_and_list_show_sync(
    world: tuple[Lab, FakeCib, Path], tmp_path: Path
) -> None:
    lab, cib, conf = world
    lab.world.add("guest1", "host1")
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    assert cli(conf, "key", "create", "gc", "--domains", "guest1", "--out", str(old))[0] == 0
    rc, data, err = cli(conf, "key", "rotate", "gc", "--overlap", "1h", "--out", str(new))
    assert rc == 0 and data["wire_name"] == "gc:2", err
    for key in (old, new):
        assert run_agent(agent_args(lab, key, "status", "guest1"))[0] == 0
    rc, listed, _ = cli(conf, "key", "list")
    assert rc == 0 and listed["keys"][0]["accepted_generations"] == [2, 1]
    assert all(v == ["gc:1", "gc:2"] for v in listed["keys"][0]["listeners"].values())
    rc, synced, _ = cli(conf, "key", "sync")
    assert rc == 0 and {r["state"] for r in synced["listeners"].values()} == {"in sync"}
    # rotating again inside the overlap would cut off guests still on gen 1: refused
    rc, _out, err = invoke("key", "rotate", "gc", "--config", str(conf))
    assert rc == 2 and "overlap" in err
    # the overlap ends: only the new generation works
    meta = json.loads(cib.nv[CIB_KEY_PREFIX + "gc"])
    meta["previous_until"] = int(time.time()) - 1
    cib.nv[CIB_KEY_PREFIX + "gc"] = json.dumps(meta)
    assert run_agent(agent_args(lab, old, "status", "guest1"))[0] == 1
    assert run_agent(agent_args(lab, new, "status", "guest1"))[0] == 0
    rc, shown, _ = cli(conf, "key", "show", "gc")
    assert rc == 0 and shown["meta"]["generation"] == 2
    assert shown["guest_key_text"] == new.read_text()


def test_a_host_that_was_down_gets_every_key_when_back(world: tuple[Lab, FakeCib, Path]) -> None:
    lab, cib, conf = world
    lab.world.add("guest1", "host3")
    lab.stop_host("host3")
    rc, data, err = cli(conf, "key", "create", "gc", "--domains", "guest1")
    assert rc == 0, err
    assert data["listeners"]["host3"].startswith("unreachable")
    # host3 comes back with the CIB that Pacemaker replicated while it was down
    store = KeyStore(
        lab.listeners["host3"].cfg.keys_dir, lambda _m: None, HOST_KEY.secret, cib.element
    )
    assert store.get("gc:1") is not None


def test_init_derives_the_same_secret_on_every_host_and_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cib = FakeCib()
    monkeypatch.setattr(fence_cli, "pacemaker_cib", cib.element)
    monkeypatch.setattr(fence_cli, "_cib_write", lambda n, v: cib.nv.__setitem__(n, v))
    corosync = tmp_path / "corosync.conf"
    corosync.write_text(
        "totem {\n cluster_name: prod\n}\nnodelist {\n"
        " node {\n  ring0_addr: 10.0.0.11\n  name: host1\n  nodeid: 1\n }\n"
        " node {\n  ring0_addr: 10.0.0.12\n  name: host2\n  nodeid: 2\n }\n}\n"
    )
    authkey = tmp_path / "authkey"
    authkey.write_bytes(os.urandom(256))
    prints = {}
    for host in ("host1", "host2"):
        conf = tmp_path / host / "fence" / "listener.conf"
        argv = [
            "init", "--node", host, "--corosync-conf", str(corosync),
            "--authkey", str(authkey), "--config", str(conf), "--json",
        ]  # fmt: skip
        rc, out, err = invoke(*argv)
        assert rc == 0, err
        data = json.loads(out)
        validate(data)
        assert data["schema"] == "kvmha.fence-init.v1" and data["hosts_key"]["created"]
        assert data["peers"] == {"host1": "10.0.0.11:1230", "host2": "10.0.0.12:1230"}
        prints[host] = data["hosts_key"]["fingerprint"]
        assert oct(os.stat(conf.parent).st_mode & 0o777) == "0o750"
        assert oct(os.stat(conf).st_mode & 0o777) == "0o640"
        assert oct(os.stat(conf.parent / "hosts.key").st_mode & 0o777) == "0o600"
        assert oct(os.stat(conf.parent / "keys").st_mode & 0o777) == "0o700"
        again = json.loads(invoke(*argv)[1])
        assert not again["config"]["changed"] and not again["hosts_key"]["created"]
    assert prints["host1"] == prints["host2"]
    assert data["cib"] == "matches"
    # a host whose secret differs (another authkey) is told how to fix it
    authkey.write_bytes(os.urandom(256))
    conf3 = tmp_path / "host3" / "fence" / "listener.conf"
    rc, _out, err = invoke(
        "init", "--node", "host2", "--corosync-conf", str(corosync), "--authkey", str(authkey),
        "--config", str(conf3),
    )  # fmt: skip
    assert rc == 1 and "differs" in err and "fix: copy" in err and "scp" in err
    # a node name that corosync does not know: exit 2, the fix named
    rc, _out, err = invoke(
        "init", "--node", "nope", "--corosync-conf", str(corosync), "--config", str(conf3)
    )
    assert rc == 2 and "fix: give --node" in err


def test_wire_names() -> None:
    assert wire_name("gc", 3) == "gc:3"
    assert agent.KEY_NAME_RE.match(wire_name("a" * fence_cli.CIB_NAME_MAX, 10**14))
    rc, _out, err = invoke("key", "create", "a" * 49, "--tag", "t")
    assert rc == 2 and "at most 48" in err
