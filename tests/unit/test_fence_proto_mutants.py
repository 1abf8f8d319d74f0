"""Tests that kill surviving mutants of the fence protocol's MACs and key files
(scripts/mutation.sh fence-proto; docs/testing.md).

The guest side (fence_kvmha) ships separately from the listener, so the wire format is
pinned by a known-answer vector, and re-derived here from the protocol's own description
(fence/agent.py's docstring) with nothing but the standard library."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from pathlib import Path

import pytest

from kvmha.fence import agent
from kvmha.fence.agent import Key, KeyFileError

SECRET = bytes(range(32))
NC, NS = b"\x01" * 32, b"\x02" * 32
BODY = {"action": "off", "plug": "vm1", "timeout": 20}
ANSWER = {"status": "ok", "state": "off"}
CLIENT_MAC = "cb565e0955951b0f5c8c19fd1a7ca8a7dd63909579c6dbeb283a6ed50f64b28f"
SERVER_MAC = "a5304e9833df80d41d10256aae5b99e6d97259474a5d7867ac62ca6b1c9ae688"


def spec_transcript(*parts: bytes) -> bytes:
    return b"kvmha-fence/1" + b"".join(struct.pack(">I", len(p)) + p for p in parts)


def spec_canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def test_known_answer_vector_of_both_macs() -> None:
    cmac = agent.client_mac(SECRET, "gc1", NC, NS, BODY)
    assert cmac.hex() == CLIENT_MAC
    assert agent.server_mac(SECRET, "gc1", NC, NS, cmac, ANSWER).hex() == SERVER_MAC


def test_the_vector_follows_from_the_documented_format() -> None:
    msg = spec_transcript(b"client", b"gc1", NC, NS, spec_canonical(BODY))
    assert hmac.new(SECRET, msg, hashlib.sha256).hexdigest() == CLIENT_MAC
    smsg = spec_transcript(
        b"server", b"gc1", NC, NS, bytes.fromhex(CLIENT_MAC), spec_canonical(ANSWER)
    )
    assert hmac.new(SECRET, smsg, hashlib.sha256).hexdigest() == SERVER_MAC


def test_canonical_json_and_transcript_bytes() -> None:
    assert agent.canonical({"b": [1, "\u00e9"], "a": None}) == b'{"a":null,"b":[1,"\\u00e9"]}'
    assert agent.transcript(b"ab", b"") == b"kvmha-fence/1\x00\x00\x00\x02ab\x00\x00\x00\x00"
    # length prefixes: moving a byte from one part to the next changes the transcript
    assert agent.transcript(b"a", b"bc") != agent.transcript(b"ab", b"c")


@pytest.mark.parametrize(
    ("value", "ok"), [("ab" * 32, True), ("ab" * 31, False), ("zz" * 32, False), (None, False)]
)
def test_hex_fields(value: object, ok: bool) -> None:
    if ok:
        assert agent.hex_field({"mac": value}, "mac", 32) == bytes.fromhex(str(value))
    else:
        with pytest.raises(agent.ProtocolError, match="bad 'mac' field"):
            agent.hex_field({"mac": value}, "mac", 32)


def key_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "k.key"
    p.write_text(text)
    os.chmod(p, mode)
    return p


def test_key_file_modes_and_owner(tmp_path: Path) -> None:
    text = agent.key_text("gc1", SECRET)
    p = key_file(tmp_path, text)
    assert Key.load(str(p)).secret == SECRET
    for mode in (0o640, 0o604, 0o610, 0o601):
        os.chmod(p, mode)
        with pytest.raises(KeyFileError, match="group and others must have no access"):
            Key.load(str(p))
    os.chmod(p, 0o600)
    if os.geteuid() == 0:
        os.chown(p, 65534, 65534)
        with pytest.raises(KeyFileError, match="owned by uid 65534"):
            Key.load(str(p))
    with pytest.raises(KeyFileError, match="does not exist"):
        Key.load(str(tmp_path / "missing.key"))
    with pytest.raises(KeyFileError, match="not a regular file"):
        Key.load(str(tmp_path))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("# only a comment\n\nname=gc1\nsecret=" + "00" * 16 + "\n", None),
        ("name=gc1\nsecret=" + "00" * 15 + "\n", "shorter than 16 bytes"),
        ("name=gc1\nsecret=xyz\n", "secret= is not hex"),
        ("secret=" + "00" * 16 + "\n", "missing or invalid name="),
        ("name=bad name\nsecret=" + "00" * 16 + "\n", "missing or invalid name="),
        ("name=gc1\nsecret=" + "00" * 16 + "\njunk\n", "not a key=value line"),
    ],
)
def test_key_text_rules(text: str, error: str | None) -> None:
    if error is None:
        fields = agent.parse_key_text(text, "k")
        assert fields["name"] == "gc1" and fields["secret"] == "00" * 16
    else:
        with pytest.raises(KeyFileError, match=error):
            agent.parse_key_text(text, "k")


def test_key_fields_keep_values_with_equals_signs_and_spaces(tmp_path: Path) -> None:
    p = key_file(tmp_path, agent.key_text("gc1", SECRET, {"tag": " a=b "}))
    k = Key.load(str(p))
    assert (k.name, k.fields["tag"]) == ("gc1", "a=b")


def test_a_key_file_that_is_not_utf8_is_refused_with_the_reason(tmp_path: Path) -> None:
    p = tmp_path / "k.key"
    p.write_bytes(b"name=gc1\nsecret=\xff\xfe\n")
    os.chmod(p, 0o600)
    with pytest.raises(KeyFileError, match="cannot read key file"):
        Key.load(str(p))


def test_a_key_file_that_cannot_be_opened_is_refused_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = key_file(tmp_path, agent.key_text("gc1", SECRET))
    import builtins

    real = builtins.open

    def deny(path: object, *a: object, **kw: object) -> object:
        if str(path) == str(p):
            raise PermissionError(13, "Permission denied")
        return real(path, *a, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(KeyFileError, match="cannot read key file .*Permission denied"):
        Key.load(str(p))


def test_a_key_path_through_a_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(KeyFileError, match="Not a directory"):
        Key.load(str(tmp_path / "f" / "k.key"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")
def test_a_root_owned_key_is_accepted_by_another_user() -> None:
    """check_key_mode: the owner may be the process's user or root (the RPM installs the
    keys root-owned), nobody else."""
    import shutil
    import subprocess
    import tempfile

    d = tempfile.mkdtemp(dir="/tmp")
    try:
        os.chmod(d, 0o755)
        p = Path(d) / "k.key"
        p.write_text(agent.key_text("gc1", SECRET))
        os.chmod(p, 0o600)
        code = f"from kvmha.fence.agent import check_key_mode; check_key_mode({str(p)!r})"
        r = subprocess.run(
            [shutil.which("runuser") or "runuser", "-u", "nobody", "--",
             "/usr/bin/python3", "-I", "-c", code],
            capture_output=True, text=True, timeout=30, check=False, cwd="/",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    finally:
        shutil.rmtree(d)


def test_a_bad_key_line_is_quoted_cut_to_40_characters() -> None:
    with pytest.raises(KeyFileError) as e:
        agent.parse_key_text("x" * 100 + "\n", "k")
    assert str(e.value) == f"k: not a key=value line: {'x' * 40!r}"


def _fake_listener(
    reply: dict[str, object] | None, refuse: str = "", at_hello: bool = False
) -> int:
    """A listener holding the key that answers one exchange with `reply` (MAC'd
    correctly) or refuses it with `refuse`."""
    import socket
    import threading
    import time

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        c, _ = srv.accept()
        with c, srv:
            hello = agent.read_frame(c, 4096, time.monotonic() + 5)
            if at_hello:
                agent.send_frame(c, {"type": "refused", "reason": refuse}, time.monotonic() + 5)
                return
            ns = os.urandom(32)
            agent.send_frame(c, {"type": "challenge", "ns": ns.hex()}, time.monotonic() + 5)
            req = agent.read_frame(c, 4096, time.monotonic() + 5)
            if refuse:
                agent.send_frame(c, {"type": "refused", "reason": refuse}, time.monotonic() + 5)
                return
            assert reply is not None
            nc = bytes.fromhex(str(hello["nc"]))
            cmac = bytes.fromhex(str(req["mac"]))
            body = reply["body"]
            smac = agent.server_mac(SECRET, "gc1", nc, ns, cmac, body)  # type: ignore[arg-type]
            agent.send_frame(c, {**reply, "mac": smac.hex()}, time.monotonic() + 5)

    threading.Thread(target=serve, daemon=True).start()
    return int(srv.getsockname()[1])


@pytest.mark.parametrize(
    "reply",
    [
        {"type": "responsx", "body": {"status": "ok", "state": "off"}},
        {"type": "response", "body": ["ok", "off"]},
    ],
)
def test_an_answer_that_is_not_a_response_is_not_believed(reply: dict[str, object]) -> None:
    """exchange: a correctly signed frame is still only an answer if it is a response
    frame with an object body."""
    port = _fake_listener(reply)
    with pytest.raises(agent.ProtocolError, match="unexpected answer to the request"):
        agent.exchange("127.0.0.1", port, Key("gc1", SECRET), BODY, 5, 5)


@pytest.mark.parametrize("at_hello", [True, False])
def test_a_refusal_reason_is_quoted_cut_to_200_characters(at_hello: bool) -> None:
    port = _fake_listener(None, refuse="r" * 300, at_hello=at_hello)
    with pytest.raises(agent.ProtocolError) as e:
        agent.exchange("127.0.0.1", port, Key("gc1", SECRET), BODY, 5, 5)
    assert str(e.value) == "refused: " + "r" * 200
