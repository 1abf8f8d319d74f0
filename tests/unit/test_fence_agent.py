"""fence_kvmha on its own: options, metadata, key files, the wire format."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.fence_lab import run_agent

from kvmha.fence import agent
from kvmha.fence.keys import KeyFileError, Scope, write_private

RNG = "/usr/share/cluster/relaxng/metadata.rng"
AGENT_SOURCE = Path(__file__).resolve().parents[2] / "fence" / "agent.py"


def test_agent_module_is_stdlib_only() -> None:
    """The guest side ships alone: no kvmha imports, no third-party modules."""
    import sys

    tree = ast.parse(AGENT_SOURCE.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        for n in names:
            top = n.split(".")[0]
            assert top == "__future__" or top in sys.stdlib_module_names, n


@pytest.mark.skipif(not shutil.which("xmllint") or not os.path.exists(RNG), reason="no schema")
def test_metadata_validates_against_fence_agents_schema(tmp_path: Path) -> None:
    f = tmp_path / "meta.xml"
    f.write_text(agent.metadata())
    r = subprocess.run(
        ["xmllint", "--noout", "--relaxng", RNG, str(f)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr


def test_metadata_content() -> None:
    root = ET.fromstring(agent.metadata())
    params = {p.get("name"): p for p in root.iter("parameter")}
    for name in (
        "action",
        "plug",
        "port",
        "ip",
        "ipaddr",
        "ipport",
        "key_file",
        "delay",
        "power_timeout",
        "power_wait",
        "verbose",
    ):
        assert name in params, name
    assert params["port"].get("deprecated") == "1"
    assert params["plug"].get("obsoletes") == "port"
    assert params["ip"].get("required") == "1"
    actions = [a.get("name") for a in root.iter("action")]
    assert actions == agent.ACTIONS
    rc, out, _ = run_agent(["-o", "metadata"])
    assert rc == 0 and out == agent.metadata()
    rc, out, _ = run_agent(stdin="action=metadata\n")
    assert rc == 0 and out.startswith("<?xml")
    rc, out, _ = run_agent(["-o", "manpage"])
    assert rc == 0 and ".SH OPTIONS" in out


def test_stdin_options_as_pacemaker_sends_them() -> None:
    debug: list[str] = []
    text = (
        "# comment\naction=off\nnodename=gc-node1\nport=guest1\nipaddr='10.0.0.1,10.0.0.2'\n"
        "ipport=1299\nkey-file=/k\nverbose=yes\npcmk_whatever=1\nbogus line\n"
    )
    opts = agent.parse_options([], text, debug.append)
    assert opts["action"] == "off"
    assert opts["plug"] == "guest1"
    assert opts["ip"] == "10.0.0.1,10.0.0.2"
    assert opts["ipport"] == "1299"
    assert opts["key_file"] == "/k"
    assert opts["verbose"] == "1"
    assert opts["power_timeout"] == "20"
    assert any("nodename" in d for d in debug)
    assert any("pcmk_whatever" in d for d in debug)
    assert any("bogus line" in d for d in debug)


def test_command_line_options() -> None:
    opts = agent.parse_options(
        ["-o", "status", "-n", "g", "-a", "a,b", "-u", "7", "-k", "/k", "-v", "--delay=3"],
        None,
        lambda _m: None,
    )
    assert (opts["action"], opts["plug"], opts["ip"], opts["ipport"]) == ("status", "g", "a,b", "7")
    assert opts["verbose"] == "1" and opts["delay"] == "3"
    with pytest.raises(agent.UsageFailure):
        agent.parse_options(["--nope"], None, lambda _m: None)
    assert agent.split_address("10.0.0.1:99", 1) == ("10.0.0.1", 99)
    assert agent.split_address("[::1]:99", 1) == ("::1", 99)
    assert agent.split_address("fe80::1", 1) == ("fe80::1", 1)
    assert agent.split_address("h", 5) == ("h", 5)


def test_usage_errors_exit_1(tmp_path: Path) -> None:
    key = tmp_path / "k"
    write_private(key, agent.key_text("gc", os.urandom(32)))
    assert run_agent(["-o", "status", "-k", str(key)])[0] == 1  # no ip
    rc, _, err = run_agent(["-o", "status", "-k", str(key), "-a", "127.0.0.1:1"])
    assert rc == 1 and "no plug" in err
    rc, _, err = run_agent(["-o", "off", "-n", "x", "-k", str(key), "-a", "h", "-u", "0"])
    assert rc == 1 and "ipport" in err
    rc, _, err = run_agent(
        ["-o", "off", "-n", "x", "-k", str(key), "-a", "h", "--power-timeout", "abc"]
    )
    assert rc == 1 and "power_timeout" in err
    assert run_agent(["-o", "validate-all", "-k", str(key), "-a", "h"])[0] == 0
    rc, _, err = run_agent(["-o", "validate-all", "-k", str(tmp_path / "nokey"), "-a", "h"])
    assert rc == 1 and "does not exist" in err


def test_key_file_modes_and_format(tmp_path: Path) -> None:
    f = tmp_path / "k"
    write_private(f, agent.key_text("gc1", b"s" * 32))
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    k = agent.Key.load(str(f))
    assert (k.name, k.secret) == ("gc1", b"s" * 32)
    for mode in (0o640, 0o604, 0o644, 0o660):
        os.chmod(f, mode)
        with pytest.raises(agent.KeyFileError, match=f"mode {mode:04o}.*chmod 0600"):
            agent.Key.load(str(f))
    os.chmod(f, 0o400)
    agent.Key.load(str(f))
    for text, why in (
        ("name=gc\nsecret=zz\n", "not hex"),
        ("name=gc\nsecret=0011\n", "shorter"),
        ("secret=" + "00" * 32 + "\n", "name"),
        ("name=a b\nsecret=" + "00" * 32 + "\n", "name"),
        ("garbage\n", "key=value"),
    ):
        os.chmod(f, 0o600)
        f.write_text(text)
        with pytest.raises(agent.KeyFileError, match=why):
            agent.Key.load(str(f))
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(agent.KeyFileError, match="not a regular file"):
        agent.Key.load(str(d))


def test_scopes() -> None:
    from kvmha.fence.keys import Target

    s = Scope.parse({"domains": "a, 6F31C28B-E297-52D4-9D04-417EC6A115D2"}, "x")
    assert s.allows(Target("a"))
    assert s.allows(Target("b", "6f31c28b-e297-52d4-9d04-417ec6a115d2"))
    assert not s.allows(Target("b", "00000000-0000-0000-0000-000000000000"))
    assert not s.allows(Target("A"))
    t = Scope.parse({"tag": "web"}, "x")
    assert t.allows(Target("z", tags=frozenset({"web", "x"})))
    assert not t.allows(Target("web"))
    dc = Scope.parse({"dc": "qa"}, "x")
    assert dc.allows(Target("z", dc="qa")) and not dc.allows(Target("z", dc="dev"))
    assert not dc.allows(Target("z"))
    for bad in ({}, {"domains": "a", "tag": "b"}, {"tag": "a,b"}, {"domains": " , "}):
        with pytest.raises(KeyFileError):
            Scope.parse(bad, "x")


def test_frames_and_macs() -> None:
    body = {"action": "off", "plug": "g"}
    nc, ns = b"c" * 32, b"s" * 32
    m = agent.client_mac(b"k" * 32, "gc", nc, ns, body)
    # any change of key, name, nonce or body changes the MAC
    assert m != agent.client_mac(b"K" * 32, "gc", nc, ns, body)
    assert m != agent.client_mac(b"k" * 32, "gd", nc, ns, body)
    assert m != agent.client_mac(b"k" * 32, "gc", ns, nc, body)
    assert m != agent.client_mac(b"k" * 32, "gc", nc, ns, dict(body, plug="h"))
    # the server's MAC is a different function of the same transcript
    assert m != agent.server_mac(b"k" * 32, "gc", nc, ns, b"", body)
    assert agent.transcript(b"ab", b"c") != agent.transcript(b"a", b"bc")
    frame = agent.encode_frame(body)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
