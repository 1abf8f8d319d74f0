"""Health checks against real local TCP / HTTP servers (threads on 127.0.0.1)."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.agent_env import agent_env, write_test_domain

from kvmha.agents import guest, health, ocf


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code = 200 if self.path == "/ok" else 503
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http_server() -> Iterator[int]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def test_tcp(http_server: int, closed_port: int) -> None:
    assert health.tcp("127.0.0.1", http_server, 2) is None
    err = health.tcp("127.0.0.1", closed_port, 2)
    assert err is not None and f"127.0.0.1:{closed_port}" in err


def test_http(http_server: int, closed_port: int) -> None:
    assert health.http(f"http://127.0.0.1:{http_server}/ok", 200, 2) is None
    err = health.http(f"http://127.0.0.1:{http_server}/bad", 200, 2)
    assert err is not None and "returned 503, expected 200" in err
    assert health.http(f"http://127.0.0.1:{http_server}/bad", 503, 2) is None
    err = health.http(f"http://127.0.0.1:{closed_port}/", 200, 2)
    assert err is not None and "failed" in err


def test_http_timeout() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)  # accepts, never answers
    try:
        err = health.http(f"http://127.0.0.1:{srv.getsockname()[1]}/", 200, 0.3)
        assert err is not None and "timed out" in err
    finally:
        srv.close()


class FakeAgentDomain:
    """Stands in for libvirt_qemu.qemuAgentCommand (test:///default has no guest agent)."""

    def __init__(self, exitcode: int) -> None:
        self.exitcode = exitcode
        self.polls = 0


def test_agent_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import json
    import types

    def cmd(dom: FakeAgentDomain, text: str, timeout: int, flags: int) -> str:
        req = json.loads(text)
        if req["execute"] == "guest-ping":
            if dom.exitcode < 0:
                raise RuntimeError("Guest agent is not responding")
            return '{"return": {}}'
        if req["execute"] == "guest-exec":
            assert req["arguments"]["path"] == "/bin/check"
            return '{"return": {"pid": 42}}'
        dom.polls += 1
        if dom.polls < 2:
            return '{"return": {"exited": false}}'
        return json.dumps(
            {"return": {"exited": True, "exitcode": dom.exitcode, "err-data": "YnJva2Vu"}}
        )  # "broken"

    fake = types.SimpleNamespace(qemuAgentCommand=cmd)
    real_import = importlib.import_module
    monkeypatch.setattr(
        importlib, "import_module", lambda n: fake if n == "libvirt_qemu" else real_import(n)
    )
    assert health.agent_ping(FakeAgentDomain(0), 1) is None
    err = health.agent_ping(FakeAgentDomain(-1), 1)
    assert err is not None and "guest-ping" in err
    assert health.agent_exec(FakeAgentDomain(0), ["/bin/check", "-q"], 0, 2) is None
    err = health.agent_exec(FakeAgentDomain(1), ["/bin/check"], 0, 2)
    assert err is not None and "exit status 1, expected 0: broken" in err


def test_deep_monitor_runs_health_checks(
    tmp_path: Path, http_server: int, closed_port: int, capfd: pytest.CaptureFixture[str]
) -> None:
    libvirt = pytest.importorskip("libvirt")
    holder = libvirt.open("test:///default")  # test driver state lives while a conn is open
    cfg = write_test_domain(tmp_path, "kvmha-unit-health")
    env = agent_env(
        tmp_path,
        cfg,
        {
            "OCF_RESKEY_CRM_meta_interval": "60000",
            "OCF_RESKEY_health_tcp": f"127.0.0.1:{http_server}",
            "OCF_RESKEY_health_http": f"http://127.0.0.1:{http_server}/ok",
            "OCF_RESKEY_health_timeout": "2",
        },
    )
    assert guest.main(["Guest", "start"], env) == ocf.SUCCESS
    try:
        assert guest.main(["Guest", "monitor"], {**env, "OCF_CHECK_LEVEL": "10"}) == 0
        bad = {**env, "OCF_RESKEY_health_tcp": f"127.0.0.1:{closed_port}"}
        assert guest.main(["Guest", "monitor"], bad) == 0  # depth 0: no health checks
        assert guest.main(["Guest", "monitor"], {**bad, "OCF_CHECK_LEVEL": "10"}) == 1
        assert f"TCP 127.0.0.1:{closed_port} does not accept" in capfd.readouterr().err
        bad = {**env, "OCF_RESKEY_health_http": f"http://127.0.0.1:{http_server}/down"}
        assert guest.main(["Guest", "monitor"], {**bad, "OCF_CHECK_LEVEL": "10"}) == 1
        assert "returned 503" in capfd.readouterr().err
    finally:
        assert guest.main(["Guest", "stop"], env) == ocf.SUCCESS
        holder.close()


def test_a_start_whose_domain_is_destroyed_while_its_health_waits_fails_at_once(
    tmp_path: Path, closed_port: int, capfd: pytest.CaptureFixture[str]
) -> None:
    """The start's health wait (up to the operation's timeout) ends when the domain stops
    running meanwhile (a fence through the listener destroyed it): an error that says so,
    not a wait until the timeout with "runs but" (which held up the host cluster's stop,
    and with it the guest cluster's fence, for the whole start timeout)."""
    import threading

    libvirt = pytest.importorskip("libvirt")
    holder = libvirt.open("test:///default")
    cfg = write_test_domain(tmp_path, "kvmha-unit-gone")
    env = agent_env(
        tmp_path,
        cfg,
        {
            "OCF_RESKEY_CRM_meta_timeout": "60000",
            "OCF_RESKEY_health_tcp": f"127.0.0.1:{closed_port}",  # never healthy
            "OCF_RESKEY_health_timeout": "1",
        },
    )

    def destroy_when_running() -> None:
        for _ in range(200):
            try:
                dom = holder.lookupByName("kvmha-unit-gone")
                if dom.isActive():
                    time.sleep(0.5)  # inside the health wait by now
                    dom.destroy()
                    return
            except libvirt.libvirtError:
                pass
            time.sleep(0.05)

    t = threading.Thread(target=destroy_when_running, daemon=True)
    t.start()
    try:
        assert guest.main(["Guest", "start"], env) == ocf.ERR_GENERIC
        err = capfd.readouterr().err
        assert "kvmha-unit-gone was shut off or destroyed while starting" in err, err
        assert "runs but" not in err
    finally:
        t.join(10)
        assert guest.main(["Guest", "stop"], env) == ocf.SUCCESS
        holder.close()
