"""Tests that kill surviving mutants of the fence listener's "off" decisions
(scripts/mutation.sh listener; docs/testing.md). Each names the decision it pins down."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from kvmha.fence.keys import Scope
from kvmha.fence.virt import BackendError, Info

from .test_fence_fakes import Lab, agent_args, lab_fixture, run_agent


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    yield from lab_fixture(tmp_path)


@pytest.fixture
def key(lab: Lab) -> Path:
    for i, h in enumerate(("host1", "host2", "host3"), 1):
        lab.world.add(f"guest{i}", h)
    return lab.add_key("gc1", Scope("domains", ("guest1", "guest2", "guest3")))


def test_a_domain_no_member_host_has_is_off_only_once_every_host_answered(
    lab: Lab, key: Path
) -> None:
    """The rule for success (docs/fence.md): a domain last seen on host1 that no member
    host has any more is off once every member host's own libvirt says so (host1's
    included); while host1 is silent, its last sighting there keeps it unconfirmed."""
    rc, out, _ = run_agent(agent_args(lab, key, "status", "guest1", hosts=["host2"]))
    assert (rc, out.strip()) == (0, "Status: ON")  # seen on host1: recorded
    lab.world.doms = [d for d in lab.world.doms if d.name != "guest1"]
    rc, out, err = run_agent(agent_args(lab, key, "status", "guest1", hosts=["host2"]))
    assert (rc, out.strip()) == (2, "Status: OFF"), err
    lab.stop_host("host1")  # its listener gone: nothing confirms host1 has no copy
    rc, out, err = run_agent(agent_args(lab, key, "off", "guest1", hosts=["host2"]))
    assert rc == 1 and "host1" in err, (out, err)


class FlakyOnce:
    """A backend whose first info() fails (libvirt hiccup), then answers."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failed = False

    def info(self, plug: str) -> Optional[Info]:
        if not self.failed:
            self.failed = True
            raise BackendError("libvirt hiccup")
        return self.inner.info(plug)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("action", ["off", "reboot"])
def test_off_without_the_early_local_path_still_powers_off_the_local_copy(
    lab: Lab, key: Path, action: str
) -> None:
    """_off_everywhere: when the early local off did not start (the first look-up failed),
    the local copy is powered off with the others; success is never answered for it
    unpowered."""
    lst = lab.listeners["host1"]
    lst.backend = FlakyOnce(lst.backend)  # type: ignore[assignment]
    lab.world.find("host1", "guest1").persistent = True  # type: ignore[union-attr]
    rc, out, err = run_agent(agent_args(lab, key, action, "guest1", hosts=["host1"]))
    assert rc == 0, err
    assert ("host1", "guest1") in lab.world.offs
    assert lst.backend.failed  # type: ignore[attr-defined]


def test_a_failed_target_role_names_the_resource(lab: Lab, key: Path) -> None:
    """_off: when the host cluster cannot be told to keep the guest stopped, the answer
    says so and names the resource."""
    from kvmha.fence.cluster import ClusterError

    lab.cluster.manage("guest2")

    def refuse(rid: str, role: str) -> None:
        raise ClusterError("cibadmin: connection refused")

    lab.cluster.set_target_role = refuse  # type: ignore[method-assign]
    rc, _, err = run_agent(agent_args(lab, key, "off", "guest2", hosts=["host1"]))
    assert ("host2", "guest2") in lab.world.offs
    audit = [e for e in lab.audit_lines("host1") if e.get("action") == "off"]
    assert audit and "could not set target-role=Stopped on guest2: cibadmin" in str(
        audit[-1].get("detail")
    ), (rc, err, audit)


def test_off_powers_off_every_copy_not_only_the_local_one(lab: Lab, key: Path) -> None:
    """_off_everywhere: the early local off does not end the round: a second copy of the
    domain (mid-migration) on another host is powered off too before success."""
    uuid = lab.world.find("host1", "guest1").uuid  # type: ignore[union-attr]
    lab.world.add("guest1", "host2", uuid=uuid)
    rc, out, err = run_agent(agent_args(lab, key, "off", "guest1", hosts=["host1"]))
    assert rc == 0, err
    assert sorted(lab.world.offs) == [("host1", "guest1"), ("host2", "guest1")]
    assert not any(d.name == "guest1" and d.active for d in lab.world.doms)


def test_an_out_of_scope_domain_on_the_listeners_own_host_is_never_touched(
    lab: Lab, key: Path
) -> None:
    """_early_local_off: the early local off runs only for a domain the key may fence."""
    lab.world.add("other", "host1")
    for action in ("off", "reboot"):
        rc, out, err = run_agent(agent_args(lab, key, action, "other", hosts=["host1"]))
        assert rc == 1 and "may not" in err, (action, out, err)
    assert lab.world.offs == []
    assert lab.world.find("host1", "other").active  # type: ignore[union-attr]


def _exchange(lab: Lab, key: Path, body: dict[str, Any], kind: str = "request") -> Any:
    """One authenticated exchange by hand; kind is the request frame's type."""
    import os
    import socket
    import time

    from kvmha.fence import agent
    from kvmha.fence.keys import Key

    k = Key.load(str(key))
    with socket.create_connection(("127.0.0.1", lab.ports["host1"])) as s:
        nc = os.urandom(32)
        hello = {"type": "hello", "proto": agent.PROTOCOL, "key": k.name, "nc": nc.hex()}
        agent.send_frame(s, hello, time.monotonic() + 5)
        ch = agent.read_frame(s, agent.MAX_RESPONSE_FRAME, time.monotonic() + 5)
        ns = bytes.fromhex(str(ch["ns"]))
        mac = agent.client_mac(k.secret, k.name, nc, ns, body)
        agent.send_frame(s, {"type": kind, "body": body, "mac": mac.hex()}, time.monotonic() + 5)
        return agent.read_frame(s, agent.MAX_RESPONSE_FRAME, time.monotonic() + 10)


def test_a_validly_signed_frame_that_is_not_a_request_is_refused(lab: Lab, key: Path) -> None:
    """handle: the MAC covers the body, the frame type is checked on its own."""
    body = {"action": "off", "plug": "guest1", "timeout": 5}
    ans = _exchange(lab, key, body, kind="response")
    assert ans["type"] == "refused" and ans["reason"] == "not a request"
    assert lab.world.offs == []


@pytest.mark.parametrize(
    ("plug", "bad"),
    [
        ("guest\x1f1", True),
        ("g" * 300, True),
        ("guest 1", True),
        ("-guest1", True),
        (7, True),
        ("guest_1.a+b:c@d-e", False),
        ("0d9b4a38-8d4e-4f0a-9c2e-1b2c3d4e5f60", False),
    ],
)
def test_plug_checks(lab: Lab, key: Path, plug: str, bad: bool) -> None:
    """dispatch: a plug is a libvirt domain name or a UUID; anything else is refused as a
    bad plug before any look-up; a good one goes on to the look-up (here: unknown)."""
    ans = _exchange(lab, key, {"action": "status", "plug": plug, "timeout": 5})
    assert ans["type"] == "response"
    assert (ans["body"].get("code") == "bad-plug") is bad, ans


def test_an_unknown_action_is_echoed_cut_to_40_characters(lab: Lab, key: Path) -> None:
    ans = _exchange(lab, key, {"action": "x" * 100, "plug": "guest1"})
    assert ans["body"]["code"] == "unknown-action"
    assert ans["body"]["message"] == f"unknown action {'x' * 40!r}"


def test_a_failed_local_off_is_an_error_that_names_the_host(lab: Lab, key: Path) -> None:
    """_off_everywhere: a host that could not power its copy off makes the answer an
    error naming that host, never "off"."""
    backend = lab.listeners["host1"].backend

    def refuse(plug: str, timeout: float) -> Info:
        raise BackendError("virDomainDestroy failed: device busy")

    backend.off = refuse  # type: ignore[method-assign]
    rc, out, err = run_agent(agent_args(lab, key, "off", "guest1", hosts=["host1"]))
    assert rc == 1, out
    assert "host1: virDomainDestroy failed" in err


def _recording_offs(lab: Lab, host: str) -> list[float]:
    """Make host's backend record the timeout each off gets."""
    backend = lab.listeners[host].backend
    real = backend.off
    seen: list[float] = []

    def off(plug: str, timeout: float) -> Info:
        seen.append(timeout)
        return real(plug, timeout)  # type: ignore[no-any-return]

    backend.off = off  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize(("asked", "used"), [(0, 1.0), (-5, 1.0), (1.5, 1.5), (7, 7.0)])
def test_a_request_timeout_is_clamped_to_at_least_a_second(
    lab: Lab, key: Path, asked: float, used: float
) -> None:
    """dispatch: a timeout under a second (or negative) does not make the power-off give
    up at once; one above it is passed on as it is."""
    seen = _recording_offs(lab, "host1")
    ans = _exchange(lab, key, {"action": "off", "plug": "guest1", "timeout": asked})
    assert ans["body"]["status"] == "ok", ans
    assert seen and all(abs(x - used) < 0.2 for x in seen), seen  # what is left of it


def test_a_short_timeout_still_reaches_a_peer(lab: Lab, key: Path) -> None:
    """_off_everywhere: the peer gets the operation's timeout plus a grace to answer,
    never less than the operation itself."""
    rc, out, err = run_agent(
        agent_args(lab, key, "off", "guest3", hosts=["host1"], extra=["--power-timeout", "2"])
    )
    assert rc == 0, err
    assert lab.world.offs == [("host3", "guest3")]


def test_off_reports_how_soon_the_guest_was_frozen(lab: Lab, key: Path) -> None:
    """_off / _early_freeze: the listener asked pauses its own copy first and reports the
    pause's figure; a guest another host runs is not frozen early (no figure)."""
    assert lab.world.find("host1", "guest1") is not None  # the asked listener runs it
    ans = _exchange(lab, key, {"action": "off", "plug": "guest1", "timeout": 5})
    assert ans["body"]["status"] == "ok" and ans["body"]["state"] == "off", ans
    assert ans["body"]["frozen_s"] == 0.001  # FakeBackend.freeze's figure
    assert lab.world.frozen == [("host1", "guest1")]
    ans = _exchange(lab, key, {"action": "off", "plug": "guest3", "timeout": 5})
    assert ans["body"]["status"] == "ok" and ans["body"]["frozen_s"] is None, ans
    assert lab.world.frozen == [("host1", "guest1")]


@pytest.mark.parametrize("timeout", ["5", True, None, [5]])
def test_a_timeout_that_is_not_a_number_is_refused(lab: Lab, key: Path, timeout: Any) -> None:
    """dispatch: only a finite int or float is a timeout (a bool is not)."""
    ans = _exchange(lab, key, {"action": "off", "plug": "guest1", "timeout": timeout})
    assert ans["body"]["status"] == "error" and ans["body"]["code"] == "bad-number", ans
    assert lab.world.offs == []


def test_an_internal_error_is_refused_with_its_reason_and_the_listener_goes_on(
    lab: Lab, key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """handle: an unexpected exception becomes a refusal ("internal error"), logged; the
    listener keeps serving."""
    backend = lab.listeners["host1"].backend
    real = backend.info
    audit = lab.listeners["host1"].audit
    logged: list[str] = []
    monkeypatch.setattr(audit, "warning", lambda msg: logged.append(msg))

    def broken(plug: str) -> Optional[Info]:
        raise RuntimeError("bug in a backend")

    backend.info = broken  # type: ignore[method-assign]
    ans = _exchange(lab, key, {"action": "status", "plug": "guest1", "timeout": 5})
    # the client learns the kind of failure, never the backend's text; the log has it all
    assert ans["type"] == "refused" and ans["reason"] == "internal error: RuntimeError", ans
    assert "bug in a backend" not in json.dumps(ans)
    assert any("bug in a backend" in m for m in logged)  # the traceback, in the log
    backend.info = real  # type: ignore[method-assign]
    rc, out, _ = run_agent(agent_args(lab, key, "status", "guest1", hosts=["host1"]))
    assert (rc, out.strip()) == (0, "Status: ON")


def test_a_hello_of_another_protocol_version_is_refused(lab: Lab, key: Path) -> None:
    import socket
    import time

    from kvmha.fence import agent

    with socket.create_connection(("127.0.0.1", lab.ports["host1"])) as s:
        hello = {"type": "hello", "proto": "kvmha-fence/0", "key": "gc1", "nc": "00" * 32}
        agent.send_frame(s, hello, time.monotonic() + 5)
        ans = agent.read_frame(s, agent.MAX_RESPONSE_FRAME, time.monotonic() + 5)
    assert ans["type"] == "refused" and ans["reason"] == "not a kvmha-fence/1 hello", ans
    assert any(
        e["result"] == "refused" and e["detail"] == "not a kvmha-fence/1 hello"
        for e in lab.audit_lines("host1")
    )


def test_a_plug_of_the_longest_allowed_length_is_accepted(lab: Lab, key: Path) -> None:
    from kvmha.fence.listener import MAX_PLUG

    ans = _exchange(lab, key, {"action": "status", "plug": "g" * MAX_PLUG, "timeout": 5})
    assert ans["body"].get("code") != "bad-plug", ans
    ans = _exchange(lab, key, {"action": "status", "plug": "g" * (MAX_PLUG + 1), "timeout": 5})
    assert ans["body"].get("code") == "bad-plug", ans


def test_a_host_cluster_error_is_an_error_answer_that_says_so(lab: Lab, key: Path) -> None:
    """dispatch: the host cluster's errors become an error answer naming it, never a
    success and never an internal error."""
    from kvmha.fence.cluster import ClusterError

    def down() -> None:
        raise ClusterError("crm_mon: connection refused")

    lab.add_key("wide", Scope("domains", ("ghost",)))
    lab.cluster.status = down  # type: ignore[assignment,method-assign]
    ans = _exchange(lab, lab.tmp / "wide.guest.key", {"action": "off", "plug": "ghost"})
    assert ans["body"]["status"] == "error" and ans["body"]["code"] == "cluster-error", ans
    assert ans["body"]["message"] == "host cluster: crm_mon: connection refused", ans


def test_a_host_request_whose_libvirt_fails_is_an_error_answer(lab: Lab, key: Path) -> None:
    """dispatch: a backend error in a host-to-host request is answered as an error."""
    from kvmha.fence import agent
    from kvmha.fence.keys import write_private
    from kvmha.fence.listener import host_secret

    from .test_fence_fakes import HOST_KEY

    hk = lab.tmp / "host2-identity.key"  # what host2's listener signs with
    write_private(
        hk, agent.key_text(f"{HOST_KEY.name}:host2", host_secret(HOST_KEY.secret, "host2"))
    )
    lab.world.down.add("host1")
    body = {"action": "locate", "plug": "guest1", "from": "host2", "to": "host1"}
    ans = _exchange(lab, hk, body)
    assert ans["body"]["status"] == "error" and ans["body"]["code"] == "libvirt-error", ans
    assert ans["body"]["message"] == "libvirt on host1 is down", ans


def test_off_of_a_shut_off_domain_on_the_listeners_host_is_already_off(lab: Lab, key: Path) -> None:
    """_early_local_off: only a running local domain is powered off early; a shut-off
    one is reported already off."""
    d = lab.world.find("host1", "guest1")
    assert d is not None
    d.persistent, d.active = True, False
    rc, out, err = run_agent(agent_args(lab, key, "off", "guest1", hosts=["host1"]))
    assert (rc, out.strip()) == (0, "Success: Already OFF"), err
    assert lab.world.offs == []


def test_a_request_without_a_timeout_gets_20_seconds(lab: Lab, key: Path) -> None:
    seen = _recording_offs(lab, "host1")
    ans = _exchange(lab, key, {"action": "off", "plug": "guest1"})
    assert ans["body"]["status"] == "ok"
    assert seen and all(abs(x - 20.0) < 0.2 for x in seen), seen


def test_malformed_nonces_and_macs_are_refused_as_such(lab: Lab, key: Path) -> None:
    """handle: a bad hex field is a bad hello or a bad request, never an internal error."""
    import socket
    import time

    from kvmha.fence import agent

    port = lab.ports["host1"]
    with socket.create_connection(("127.0.0.1", port)) as s:
        hello = {"type": "hello", "proto": agent.PROTOCOL, "key": "gc1", "nc": "zz"}
        agent.send_frame(s, hello, time.monotonic() + 5)
        ans = agent.read_frame(s, agent.MAX_RESPONSE_FRAME, time.monotonic() + 5)
    assert (ans["type"], ans.get("code")) == ("refused", "bad-hello"), ans
    with socket.create_connection(("127.0.0.1", port)) as s:
        hello = {"type": "hello", "proto": agent.PROTOCOL, "key": "gc1", "nc": "00" * 32}
        agent.send_frame(s, hello, time.monotonic() + 5)
        agent.read_frame(s, agent.MAX_RESPONSE_FRAME, time.monotonic() + 5)
        req = {"type": "request", "body": {"action": "status", "plug": "guest1"}, "mac": "zz"}
        agent.send_frame(s, req, time.monotonic() + 5)
        ans = agent.read_frame(s, agent.MAX_RESPONSE_FRAME, time.monotonic() + 5)
    assert (ans["type"], ans.get("code")) == ("refused", "bad-request"), ans


def test_every_host_that_failed_to_power_off_is_named(lab: Lab, key: Path) -> None:
    """_off_everywhere: one failure does not stop the round: every copy is tried and
    every failing host named in the error."""
    uuid = lab.world.find("host1", "guest1").uuid  # type: ignore[union-attr]
    lab.world.add("guest1", "host2", uuid=uuid)

    def refuse(plug: str, timeout: float) -> Info:
        raise BackendError("virDomainDestroy failed")

    for h in ("host1", "host2"):
        lab.listeners[h].backend.off = refuse  # type: ignore[method-assign]
    ans = _exchange(lab, key, {"action": "off", "plug": "guest1", "timeout": 5})
    msg = ans["body"].get("message", "")
    assert ans["body"]["status"] == "error" and "host1:" in msg and "host2:" in msg, ans


@pytest.mark.parametrize("name", ["bad name", "-gc1", 7])
def test_a_bad_key_name_in_the_hello_is_refused_as_such(lab: Lab, key: Path, name: Any) -> None:
    import socket
    import time

    from kvmha.fence import agent

    with socket.create_connection(("127.0.0.1", lab.ports["host1"])) as s:
        hello = {"type": "hello", "proto": agent.PROTOCOL, "key": name, "nc": "00" * 32}
        agent.send_frame(s, hello, time.monotonic() + 5)
        ans = agent.read_frame(s, agent.MAX_RESPONSE_FRAME, time.monotonic() + 5)
    assert ans["type"] == "refused" and ans["reason"] == "bad key name in hello", ans
