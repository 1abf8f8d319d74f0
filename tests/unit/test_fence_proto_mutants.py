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
