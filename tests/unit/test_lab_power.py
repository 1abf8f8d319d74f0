"""The lab power switch protocol and the host cluster's fence agent, over a real socket."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmha.process import module_argv
from kvmha.tools.lab import fence_kvmhalab, power
from kvmha.tools.lab.config import LabConfig


@pytest.fixture()
def cfg(tmp_path: Path) -> LabConfig:
    c = LabConfig(tmp_path, 2, 0)
    c.run_dir.mkdir()
    c.pdu_dir.mkdir()
    c.save()
    return c


@pytest.fixture()
def switch(cfg: LabConfig) -> Iterator[LabConfig]:
    t = threading.Thread(target=power.serve, args=(cfg, False), daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while not cfg.pdu_socket.exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield cfg


def test_handle_bad_requests(cfg: LabConfig) -> None:
    sw = power.PowerSwitch(cfg)
    assert sw.handle("") == "ERR expected: ACTION HOST ORIGIN"
    assert sw.handle("off host1") == "ERR expected: ACTION HOST ORIGIN"
    assert sw.handle("off host9 admin") == "ERR unknown host host9"
    assert sw.handle("explode host1 admin") == "ERR unknown action explode"
    assert sw.handle("status host1 admin") == "OK off"
    assert sw.handle("list - admin") == "OK host1=off,host2=off"


def test_status_follows_the_init_pid(cfg: LabConfig) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        power.pid_file(cfg, "host2").write_text(f"{sleeper.pid}\n")
        assert power.is_on(cfg, "host2")
        assert power.PowerSwitch(cfg).handle("list - x") == "OK host1=off,host2=on"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not power.is_on(cfg, "host2")


def test_request_over_the_socket(switch: LabConfig) -> None:
    assert power.request(switch.pdu_socket, "status", "host1", "test") == "off"
    with pytest.raises(power.PowerError, match="unknown host host7"):
        power.request(switch.pdu_socket, "status", "host7", "test")


def test_request_without_a_switch(tmp_path: Path) -> None:
    with pytest.raises(power.PowerError, match="does not answer"):
        power.request(tmp_path / "none.sock", "status", "host1", "test")


def run_agent(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        module_argv("kvmha.tools.lab.fence_kvmhalab", *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_fence_agent_status_and_list(switch: LabConfig) -> None:
    sock = str(switch.pdu_socket)
    r = run_agent([], f"action=status\nplug=host1\nsocket={sock}\nnodename=host1\n")
    assert r.returncode == 2  # off
    r = run_agent(["-o", "list", "--socket", sock])
    assert r.returncode == 0 and r.stdout.split() == ["host1,", "host2,"]
    r = run_agent(["-o", "monitor", f"--socket={sock}"])
    assert r.returncode == 0
    r = run_agent(["-o", "status", "--socket", sock])
    assert r.returncode == 1 and "no plug" in r.stderr


def test_fence_agent_without_switch(tmp_path: Path) -> None:
    r = run_agent(["-o", "monitor", "--socket", str(tmp_path / "x.sock")])
    assert r.returncode == 1
    assert "does not answer" in r.stderr


def test_fence_agent_stdin_parsing() -> None:
    opts = fence_kvmhalab.parse([], "# comment\noption=off\nport=host2\nignored=1\n")
    assert opts["action"] == "off" and opts["plug"] == "host2"
    assert opts["socket"] == fence_kvmhalab.DEFAULT_SOCKET


def test_fence_agent_metadata_validates(tmp_path: Path) -> None:
    r = run_agent(["-o", "metadata"])
    assert r.returncode == 0
    f = tmp_path / "meta.xml"
    f.write_text(r.stdout)
    v = subprocess.run(
        ["xmllint", "--noout", "--relaxng", "/usr/share/cluster/relaxng/metadata.rng", str(f)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert v.returncode == 0, v.stderr
