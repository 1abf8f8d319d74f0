"""kvmha.journal against journald's native socket protocol (a test server that parses it
as journald does: KEY=value lines, the binary form, memfd with SCM_RIGHTS), the one-sink
rule (no duplicates) and sd_notify."""

from __future__ import annotations

import array
import json
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmha import journal
from kvmha.fence.audit import AUDIT_MESSAGE_ID, Audit


def parse_entry(data: bytes) -> dict[str, bytes]:
    """journald's parser (journald-native.c): KEY=VALUE\\n or KEY\\n<le64 size>VALUE\\n."""
    out: dict[str, bytes] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            out[k.decode()] = v
            i = nl + 1
        else:
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            out[line.decode()] = data[nl + 9 : nl + 9 + size]
            assert data[nl + 9 + size : nl + 10 + size] == b"\n"
            i = nl + 10 + size
        assert journal.field_name(k.decode() if b"=" in line else line.decode()) is not None
    return out


class JournalServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(2)

    def entries(self, n_max: int = 50) -> list[dict[str, bytes]]:
        out = []
        self.sock.settimeout(0.3)
        for _ in range(n_max):
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
            except (TimeoutError, socket.timeout):
                break
            for level, kind, payload in anc:
                assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
                fd = array.array("i", payload[:4])[0]
                try:  # journald maps the sealed memfd from offset 0
                    data = os.pread(fd, os.fstat(fd).st_size, 0)
                finally:
                    os.close(fd)
            out.append(parse_entry(data))
        return out


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[JournalServer]:
    srv = JournalServer(tmp_path / "journal.socket")
    monkeypatch.setattr(journal, "JOURNAL_SOCKET", str(srv.path))
    monkeypatch.setattr(journal, "SYSLOG_SOCKET", str(tmp_path / "no-dev-log"))
    monkeypatch.delenv("HA_LOGFACILITY", raising=False)
    yield srv
    srv.sock.close()


def test_audit_event_is_one_structured_entry_and_one_file_line(
    server: JournalServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    a = Audit(str(tmp_path / "audit.log"), "host1")
    assert a.sink == "journal"
    a.event(peer="10.0.0.5", key="gc:1", action="off", plug="guest1", result="off", ms=3.0)
    a.event(peer="10.0.0.6", key="bad", result="refused", detail="unknown key 'bad'")
    got = server.entries()
    assert len(got) == 2
    ok, refused = got
    assert ok["MESSAGE_ID"].decode() == AUDIT_MESSAGE_ID
    assert ok["SYSLOG_IDENTIFIER"] == b"kvmha-fence-listener"
    assert ok["SYSLOG_FACILITY"] == b"3"  # daemon
    assert (ok["PRIORITY"], refused["PRIORITY"]) == (b"6", b"4")
    assert ok["KVMHA_KEY"] == b"gc:1" and ok["KVMHA_TARGET"] == b"guest1"
    assert ok["KVMHA_ACTION"] == b"off" and ok["KVMHA_RESULT"] == b"off"
    assert ok["KVMHA_ORIGIN"] == b"10.0.0.5"
    assert refused["KVMHA_RESULT"] == b"refused" and b"unknown key" in refused["KVMHA_DETAIL"]
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert [x["result"] for x in lines] == ["off", "refused"]
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # nothing twice: not on stderr as well


def test_multiline_and_oversized_entries(server: JournalServer) -> None:
    log = logging.getLogger("kvmha-test-journal")
    assert journal.configure(log, "kvmha-test") == "journal"
    log.warning("two\nlines")
    big = "x" * 400_000  # larger than a datagram: goes in a sealed memfd
    log.info(big)
    first, second = server.entries()
    assert first["MESSAGE"] == b"two\nlines" and first["PRIORITY"] == b"4"
    assert second["MESSAGE"] == big.encode()


def test_without_journald_one_line_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(journal, "JOURNAL_SOCKET", str(tmp_path / "none"))
    monkeypatch.setattr(journal, "SYSLOG_SOCKET", str(tmp_path / "none-either"))
    a = Audit(str(tmp_path / "audit.log"), "host1")
    assert a.sink == "stderr"
    a.event(key="gc:1", action="status", plug="g", result="ok")
    _out, err = capfd.readouterr()
    assert err.count("audit ") == 1 and '"gc:1"' in err
    assert len((tmp_path / "audit.log").read_text().splitlines()) == 1


def test_syslog_only_when_stderr_is_not_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    devlog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    devlog.bind(str(tmp_path / "devlog"))
    devlog.settimeout(2)
    monkeypatch.setattr(journal, "JOURNAL_SOCKET", str(tmp_path / "none"))
    monkeypatch.setattr(journal, "SYSLOG_SOCKET", str(tmp_path / "devlog"))
    log = logging.getLogger("kvmha-test-syslog")
    assert journal.configure(log, "kvmha-test") == "syslog"
    log.info("hello")
    assert b"kvmha-test[" in devlog.recv(4096)
    assert capfd.readouterr().err == ""
    # under systemd stderr is the journal: then stderr only, never /dev/log as well
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert journal.configure(log, "kvmha-test") == "stderr"
    devlog.close()


def test_ha_logfacility_none_means_stderr(
    server: JournalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HA_LOGFACILITY", "none")
    assert journal.configure(logging.getLogger("kvmha-t3"), "kvmha-test") == "stderr"
    monkeypatch.setenv("HA_LOGFACILITY", "local5")
    log = logging.getLogger("kvmha-t4")
    assert journal.configure(log, "kvmha-test") == "journal"
    log.info("x")
    assert server.entries()[0]["SYSLOG_FACILITY"] == b"21"


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"kvmha-test-notify-{os.getpid()}"
    s.bind("\0" + name if abstract else str(tmp_path / "notify"))
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name if abstract else str(tmp_path / "notify"))
    assert journal.sd_notify("READY=1", "STATUS=listening")
    assert s.recv(100) == b"READY=1\nSTATUS=listening"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not journal.sd_notify("READY=1")
    s.close()


def test_field_names() -> None:
    assert journal.field_name("key") == "KEY"
    assert journal.field_name("_hidden-x") == "HIDDEN_X"
    assert journal.field_name("1x") == "F_1X"


REAL_JOURNALD = r"""
set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /run && mkdir -p /run/systemd  # nothing of the machine's is touched
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
/lib/systemd/systemd-journald &
for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
cd / && /usr/bin/python3 -I -c '
from kvmha.fence.audit import Audit
a = Audit("/run/systemd/audit.log", "host1")
assert a.sink == "journal", a.sink
a.event(peer="10.0.0.5", key="gc:1", action="off", plug="guest1", result="off")
a.event(peer="10.0.0.6", key="nope", result="refused", detail="unknown key")
a.info("line one\nline two")
'
sleep 0.5
journalctl --sync 2>/dev/null || true
journalctl -o json --no-pager SYSLOG_IDENTIFIER=kvmha-fence-listener
"""


def test_a_real_systemd_journald_gets_one_entry_per_event(tmp_path: Path) -> None:
    """systemd-journald itself, in private mount and PID namespaces (no machine state)."""
    assert os.access("/lib/systemd/systemd-journald", os.X_OK), "systemd-journald missing"
    script = tmp_path / "jd.sh"
    script.write_text(REAL_JOURNALD)
    import subprocess

    r = subprocess.run(
        ["unshare", "-m", "--pid", "--fork", "--mount-proc", "bash", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    entries = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    audits = [e for e in entries if e.get("MESSAGE_ID") == AUDIT_MESSAGE_ID]
    assert len(audits) == 2, entries  # one per event: no stderr or /dev/log copy
    assert len(entries) == 3
    off, refused = audits
    assert off["_TRANSPORT"] == "journal" and off["PRIORITY"] == "6"
    assert (off["KVMHA_KEY"], off["KVMHA_TARGET"], off["KVMHA_ACTION"]) == ("gc:1", "guest1", "off")
    assert (off["KVMHA_RESULT"], off["KVMHA_ORIGIN"]) == ("off", "10.0.0.5")
    assert refused["PRIORITY"] == "4" and refused["KVMHA_RESULT"] == "refused"
    assert any(e["MESSAGE"] == "line one\nline two" for e in entries)
