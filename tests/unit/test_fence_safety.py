"""The listener's safety branches one by one (#18): each test fails if its safeguard is
deleted. Real listeners on loopback (support.fence_lab) unless said otherwise."""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fence_lab import HOST_KEY, Lab, lab_fixture

from kvmha.fence import agent
from kvmha.fence.keys import Key, Scope
from kvmha.fence.listener import host_secret
from kvmha.fence.virt import BackendError


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    yield from lab_fixture(tmp_path)


def ask(lab: Lab, host: str, key: Key, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return agent.exchange("127.0.0.1", lab.ports[host], key, body, 2, 10, **kw)


def guest_key(lab: Lab, name: str, scope: Scope) -> Key:
    return Key.load(str(lab.add_key(name, scope)))


# ---- the wire format, pinned: the guest side ships separately -------------------------
def _spec_mac(secret: bytes, label: bytes, *parts: bytes) -> str:
    """The MAC as docs/fence.md specifies it, written out independently of agent.py."""
    msg = b"kvmha-fence/1" + b"".join(struct.pack(">I", len(p)) + p for p in (label, *parts))
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def test_mac_known_answer_vectors() -> None:
    body = {"action": "off", "plug": "vm1", "timeout": 20.0}
    want = "2caa683daf9fbb0044af9418a1d3582696d98ea2c60eff636c1a213e65ac4d1f"
    assert agent.client_mac(b"k" * 32, "gc1", b"\1" * 32, b"\2" * 32, body).hex() == want
    canon = b'{"action":"off","plug":"vm1","timeout":20.0}'
    assert _spec_mac(b"k" * 32, b"client", b"gc1", b"\1" * 32, b"\2" * 32, canon) == want
    answer = {"status": "ok", "state": "off"}
    want_s = "dae96ed66fd5e1b77d916f7b3858df1574d3f65d8dba25201006d76d95f3403b"
    assert (
        agent.server_mac(b"k" * 32, "gc1", b"\1" * 32, b"\2" * 32, b"\3" * 32, answer).hex()
        == want_s
    )
    canon_s = b'{"state":"off","status":"ok"}'
    assert (
        _spec_mac(b"k" * 32, b"server", b"gc1", b"\1" * 32, b"\2" * 32, b"\3" * 32, canon_s)
        == want_s
    )
    # each host's own key
    assert host_secret(b"s" * 32, "host2").hex() == (
        "95f160b5f70cc2487cf69a73931d9b4ef20e616d6be11954a675b9cc8506a7be"
    )
    assert (
        host_secret(b"s" * 32, "host2")
        == hmac.new(b"s" * 32, b"kvmha-host/1:host2", "sha256").digest()
    )


def test_frames_refuse_nan_infinity_and_deep_nesting() -> None:
    for text in (b'{"timeout": NaN}', b'{"timeout": Infinity}', b'{"t": -Infinity}'):
        with pytest.raises(agent.ProtocolError, match="finite"):
            agent.parse_frame(text)
    deep = b'{"a":' * 40 + b"1" + b"}" * 40
    with pytest.raises(agent.ProtocolError, match="nested deeper"):
        agent.parse_frame(deep)
    ok = b'{"a":' * 10 + b'"[[[[[[[[[[[[[[[[[[[[[["' + b"}" * 10  # brackets in a string are text
    assert agent.parse_frame(ok)
    assert not agent.KEY_NAME_RE.match("gc1\n")  # anchored with \Z, not $


def test_agent_refuses_non_finite_numbers() -> None:
    from support.fence_lab import run_agent

    rc, _, err = run_agent(["-o", "status", "-n", "x", "-a", "127.0.0.1", "--power-timeout", "nan"])
    assert rc == 1 and "power_timeout" in err


def test_a_failed_fence_names_every_listeners_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest cluster's admin must see which host could not be confirmed, also when
    the last listener tried is the silent one: every failure is in the one-line error,
    the listeners' own answers first."""
    from support.fence_lab import run_agent

    from kvmha.fence import agent

    agent_key = agent.Key("gc", b"s" * 32)
    answers = {
        "10.0.0.1": {
            "status": "error",
            "code": "host-unconfirmed",
            "message": "host3 does not answer",
        },
        "10.0.0.2": {
            "status": "error",
            "code": "host-unconfirmed",
            "message": "host3 does not answer (2)",
        },
    }

    def fake_exchange(addr: str, port: int, key: Any, body: Any, *a: Any) -> dict[str, Any]:
        if addr in answers:
            return answers[addr]
        raise agent.ProtocolError("timed out reading from the peer")

    monkeypatch.setattr(agent, "exchange", fake_exchange)
    monkeypatch.setattr(agent.Agent, "key", lambda self: agent_key)
    rc, _out, err = run_agent(["-o", "off", "-n", "vm", "-a", "10.0.0.1,10.0.0.2,10.0.0.3"])
    assert rc == 1
    (line,) = err.strip().splitlines()
    assert line.index("10.0.0.1: host3 does not answer") < line.index("10.0.0.3: timed out")
    assert "10.0.0.2: host3 does not answer (2)" in line


def test_help_is_plain_text() -> None:
    from support.fence_lab import run_agent

    rc, out, _ = run_agent(["--help"])
    assert rc == 0 and out.startswith("Usage:\n") and ".TH" not in out and "--plug" in out


# ---- host-to-host: both names under the MAC, answers in the responder's own key ------
def test_a_host_request_pointed_at_another_host_is_refused(lab: Lab) -> None:
    lab.world.add("vm", "host3")
    me = Key(f"{HOST_KEY.name}:host1", host_secret(HOST_KEY.secret, "host1"))
    body = {"action": "locate", "plug": "vm", "from": "host1", "to": "host2"}
    with pytest.raises(agent.ProtocolError, match="authentication failed"):
        ask(lab, "host3", me, body)  # a relay redirected host1's question for host2
    ans = ask(
        lab,
        "host3",
        me,
        {**body, "to": "host3"},
        answer_secret=host_secret(HOST_KEY.secret, "host3"),
    )
    assert ans["found"] and ans["host"] == "host3"
    # host3's answer is not believed as host2's
    with pytest.raises(agent.ProtocolError, match="valid MAC"):
        ask(
            lab,
            "host3",
            me,
            {**body, "to": "host3"},
            answer_secret=host_secret(HOST_KEY.secret, "host2"),
        )
    # a host cannot claim another's name: its key is not host2's
    fake = Key(f"{HOST_KEY.name}:host2", host_secret(HOST_KEY.secret, "host1"))
    with pytest.raises(agent.ProtocolError, match="authentication failed"):
        ask(lab, "host3", fake, {**body, "from": "host2", "to": "host3"})
    # the shared key does admin requests only, no host actions
    ans = ask(lab, "host3", HOST_KEY, {"action": "local-off", "plug": "vm"})
    assert ans["code"] == "unknown-action" and lab.world.offs == []


# ---- the early local action: scope-checked, only a pause, undone on refusal ----------
def test_early_local_action_respects_the_scope(lab: Lab) -> None:
    lab.world.add("theirs", "host1")
    k = guest_key(lab, "gc", Scope("domains", ("mine",)))
    ans = ask(lab, "host1", k, {"action": "off", "plug": "theirs"})
    assert ans["code"] == "out-of-scope"
    assert lab.world.frozen == [] and lab.world.offs == []
    assert all(d.active and not d.paused for d in lab.world.doms)


def test_an_ambiguous_name_is_refused_and_the_early_pause_undone(lab: Lab) -> None:
    a = lab.world.add("vm", "host1", "aaaaaaaa-0000-4000-8000-000000000001")
    lab.world.add("vm", "host2", "bbbbbbbb-0000-4000-8000-000000000002")
    k = guest_key(lab, "gc", Scope("domains", ("vm",)))
    ans = ask(lab, "host1", k, {"action": "off", "plug": "vm"})
    assert ans["code"] == "ambiguous-name"
    assert a.uuid in ans["message"] and "host2" in ans["message"]
    assert lab.world.offs == [] and lab.world.frozen == [("host1", "vm")]
    assert lab.world.thawed == [("host1", "vm")] and not a.paused
    ans = ask(lab, "host2", k, {"action": "off", "plug": a.uuid})  # by UUID: only that one
    assert ans["status"] == "ok" and lab.world.offs == [("host1", "vm")]
    assert [d.host for d in lab.world.doms if d.active] == ["host2"]


def test_both_ends_of_a_migration_are_powered_off(lab: Lab) -> None:
    src = lab.world.add("vm", "host1", paused=True)
    lab.world.add("vm", "host3", src.uuid)
    k = guest_key(lab, "gc", Scope("domains", ("vm",)))
    ans = ask(lab, "host2", k, {"action": "off", "plug": "vm"})
    assert ans["status"] == "ok" and ans["hosts"] == ["host1", "host3"]
    assert sorted(lab.world.offs) == [("host1", "vm"), ("host3", "vm")]


def test_off_with_a_failing_host_is_an_error(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    lab.world.add("vm", "host1", "aaaaaaaa-0000-4000-8000-000000000001", paused=True)
    lab.world.add("vm", "host2", "aaaaaaaa-0000-4000-8000-000000000001")
    backend = lab.listeners["host2"].backend

    def broken_off(plug: str, timeout: float) -> dict[str, Any]:
        raise BackendError("vm is still running after 5 s")

    monkeypatch.setattr(backend, "off", broken_off)
    k = guest_key(lab, "gc", Scope("domains", ("vm",)))
    ans = ask(lab, "host1", k, {"action": "off", "plug": "vm"})
    assert ans["status"] == "error" and ans["code"] == "off-failed"
    assert "host2" in ans["message"] and "still running" in ans["message"]


def test_an_old_fence_record_does_not_make_a_silent_host_off(lab: Lab) -> None:
    lab.world.add("vm", "host3")
    k = guest_key(lab, "gc", Scope("domains", ("vm",)))
    assert ask(lab, "host1", k, {"action": "status", "plug": "vm"})["state"] == "on"  # seen
    lab.stop_host("host3")  # silent
    lab.cluster.offline.add("host3")
    lab.cluster.fenced.add("host3")
    lab.cluster.fenced_at["host3"] = time.time() - 3600  # fenced long before it was seen
    ans = ask(lab, "host1", k, {"action": "off", "plug": "vm"})
    assert ans["code"] == "host-unconfirmed" and "older than" in ans["message"]
    lab.cluster.unclean.add("host3")
    lab.cluster.fence("host3")  # now fenced after
    lab.cluster.unclean.add("host3")  # but the cluster awaits another fence: not clean
    assert ask(lab, "host1", k, {"action": "off", "plug": "vm"})["code"] == "host-unconfirmed"
    lab.cluster.unclean.discard("host3")
    ans = ask(lab, "host1", k, {"action": "off", "plug": "vm"})
    assert ans["status"] == "ok" and ans.get("already")


def test_a_member_host_missing_from_peers_must_answer_or_be_fenced(lab: Lab) -> None:
    lab.world.add("vm", "host1")
    lab.cluster.extra_hosts["host9"] = ""  # in the host cluster, no listener address
    k = guest_key(lab, "gc", Scope("domains", ("vm",)))
    ans = ask(lab, "host2", k, {"action": "off", "plug": "vm"})
    assert ans["code"] == "host-unconfirmed" and "host9" in ans["message"]
    assert lab.world.offs == [("host1", "vm")]  # powered off anyway: only the answer waits
    lab.cluster.fence("host9")
    assert ask(lab, "host2", k, {"action": "off", "plug": "vm"})["status"] == "ok"


def test_an_off_cancels_a_pending_reboot_power_on(lab: Lab) -> None:
    d = lab.world.add("vm", "host2", persistent=True)
    lst = lab.listeners["host2"]
    lst._note_off(d.uuid, "reboot-1")  # the reboot's own off
    lst._note_off(d.uuid, "off-2")  # a later off
    d.active = False
    ans = lst.do_local_on(lst_ctx(), d.uuid, 5, {"request": "reboot-1"})
    assert ans["status"] == "error" and "cancelled" in ans["message"] and not d.active
    lst._note_off(d.uuid, "reboot-3")
    ans = lst.do_local_on(lst_ctx(), d.uuid, 5, {"request": "reboot-3"})
    assert ans["status"] == "ok" and d.active
    # the time matters, not only the request: an off noted before the reboot began (less
    # the clock skew) does not cancel it; one within the skew does (the safe side)
    d.active = False
    lst._off_requests[d.uuid] = (time.time() - 60, "off-4")
    ans = lst.do_local_on(lst_ctx(), d.uuid, 5, {"request": "reboot-5", "since": time.time()})
    assert ans["status"] == "ok" and d.active
    d.active = False
    lst._off_requests[d.uuid] = (time.time() - 0.5, "off-6")
    ans = lst.do_local_on(lst_ctx(), d.uuid, 5, {"request": "reboot-7", "since": time.time()})
    assert ans["status"] == "error" and not d.active


def lst_ctx() -> Any:
    from kvmha.fence.listener import INTERNAL

    return INTERNAL


def test_peers_are_served_while_unauthenticated_clients_flood(lab: Lab) -> None:
    """Unauthenticated connections from a non-host address fill their share; the hosts'
    reserved slots (and other sources) stay free."""
    lab.world.add("vm", "host3")
    k = guest_key(lab, "gc", Scope("domains", ("vm",)))
    flood = []
    try:
        for _ in range(40):  # from 127.0.0.2: not a host address; per-source limit 16
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", lab.ports["host3"]))
            flood.append(s)
        time.sleep(0.3)
        ans = ask(lab, "host1", k, {"action": "off", "plug": "vm"})  # host1 asks host3
        assert ans["status"] == "ok" and lab.world.offs == [("host3", "vm")]
    finally:
        for s in flood:
            s.close()
    lab.listeners["host3"].refusals.flush()
    busy = [e for e in lab.audit_lines("host3") if e.get("code") in ("busy", "suppressed")]
    assert busy and all(e["peer"] == "127.0.0.2" for e in busy)


# ---- LibvirtBackend.off against a fake libvirt module --------------------------------
class FakeLibvirtError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"libvirt error {code}")
        self.code = code

    def get_error_code(self) -> int:
        return self.code


class FakeDom:
    def __init__(self, stubborn: bool = False) -> None:
        self.running = True
        self.paused = False
        self.stubborn = stubborn
        self.calls: list[str] = []

    def state(self) -> list[int]:
        return [3 if self.paused else (1 if self.running else 5), 0]

    def isActive(self) -> int:
        return int(self.running)

    def suspend(self) -> None:
        self.calls.append("suspend")
        self.paused = True

    def destroy(self) -> None:
        self.calls.append("destroy")
        if not self.stubborn:
            self.running = False


@pytest.fixture
def fake_libvirt(monkeypatch: pytest.MonkeyPatch) -> Any:
    mod = types.ModuleType("libvirt")
    mod.libvirtError = FakeLibvirtError  # type: ignore[attr-defined]
    mod.VIR_ERR_NO_DOMAIN = 42  # type: ignore[attr-defined]
    mod.VIR_DOMAIN_RUNNING = 1  # type: ignore[attr-defined]
    mod.VIR_DOMAIN_PAUSED = 3  # type: ignore[attr-defined]
    mod.registerErrorHandler = lambda *a: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "libvirt", mod)
    return mod


def test_libvirt_backend_off_pauses_destroys_and_confirms(fake_libvirt: Any) -> None:
    from kvmha.fence.virt import LibvirtBackend

    b = LibvirtBackend("test:///")
    dom = FakeDom()
    b._lookup = lambda plug: dom  # type: ignore[method-assign]
    res = b.off("vm", 2)
    assert res["state"] == "off" and not res["already"] and res["frozen_s"] is not None
    assert dom.calls[:2] == ["suspend", "destroy"]
    assert b.off("vm", 2)["already"]


def test_libvirt_backend_off_never_confirms_a_running_domain(fake_libvirt: Any) -> None:
    from kvmha.fence.virt import LibvirtBackend

    b = LibvirtBackend("test:///")
    dom = FakeDom(stubborn=True)
    b._lookup = lambda plug: dom  # type: ignore[method-assign]
    with pytest.raises(BackendError, match="still running"):
        b.off("vm", 1)
    assert dom.calls.count("destroy") > 1  # it kept trying until the deadline
    gone = FakeDom()
    b._lookup = lambda plug: None  # type: ignore[method-assign]
    assert b.off("vm", 1) == {"state": "off", "already": True}
    del gone


class JobLockedDom(FakeDom):
    """A hung guest whose stop job holds libvirt's job lock: suspend() waits for the lock
    (libvirt's own wait is 30 s), destroy() kills QEMU first, as libvirt does."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def suspend(self) -> None:
        self.calls.append("suspend")
        self.release.wait(30)


def test_libvirt_backend_off_destroys_when_the_pause_waits_for_a_job(fake_libvirt: Any) -> None:
    from kvmha.fence.virt import LibvirtBackend

    b = LibvirtBackend("test:///")
    dom = JobLockedDom()
    b._lookup = lambda plug: dom  # type: ignore[method-assign]
    try:
        res = b.off("vm", 5)
    finally:
        dom.release.set()
    assert res["state"] == "off" and not res["already"]
    assert res["frozen_s"] is None  # it was never paused: reported as such, not as frozen
    assert "destroy" in dom.calls and not dom.running


def test_libvirt_backend_freeze_and_thaw(fake_libvirt: Any) -> None:
    from kvmha.fence.virt import LibvirtBackend

    b = LibvirtBackend("test:///")
    dom = FakeDom()
    dom.resume = lambda: setattr(dom, "paused", False)  # type: ignore[attr-defined]
    b._lookup = lambda plug: dom  # type: ignore[method-assign]
    assert b.freeze("vm") is not None and dom.paused
    assert b.freeze("vm") is None  # already paused: not paused by this call
    b.thaw("vm")
    assert not dom.paused
