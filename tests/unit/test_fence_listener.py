"""kvmha-fence-listener with fence_kvmha: three real listeners on loopback, fake libvirt.

Forwarding, cluster-aware off, scopes, refusals, the audit log, fail-over.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fence_lab import (
    HOST_KEY,
    Lab,
    agent_args,
    lab_fixture,
    run_agent,
    wait_until,
)

from kvmha.fence import agent
from kvmha.fence.keys import Key, Scope


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    yield from lab_fixture(tmp_path)


@pytest.fixture
def key(lab: Lab) -> Path:
    for i, h in enumerate(("host1", "host2", "host3"), 1):
        lab.world.add(f"guest{i}", h)
    lab.world.add("other", "host2")
    return lab.add_key("gc1", Scope("domains", ("guest1", "guest2", "guest3")))


def test_status_of_a_domain_on_another_host(lab: Lab, key: Path) -> None:
    rc, out, err = run_agent(agent_args(lab, key, "status", "guest3", hosts=["host1"]))
    assert (rc, out.strip()) == (0, "Status: ON"), err
    uuid = lab.world.find("host3", "guest3").uuid  # type: ignore[union-attr]
    rc, out, _ = run_agent(agent_args(lab, key, "status", uuid, hosts=["host1"]))
    assert (rc, out.strip()) == (0, "Status: ON")


def test_off_is_forwarded_to_the_owner_and_confirmed(lab: Lab, key: Path) -> None:
    rc, out, err = run_agent(agent_args(lab, key, "off", "guest3", hosts=["host1"]))
    assert rc == 0, err
    assert out.strip() == "Success: Powered OFF"
    assert lab.world.offs == [("host3", "guest3")]
    # the owner logged the forwarded request, the first listener the guest's request
    (req,) = [e for e in lab.audit_lines("host1") if e.get("action") == "off"]
    assert req["key"] == "gc1" and req["request"]
    # host1 asked in its own name, and the owner's log says on whose behalf
    (fwd,) = [e for e in lab.audit_lines("host3") if e.get("action") == "local-off"]
    assert fwd["key"] == "@hosts:host1"
    assert fwd["origin"] == {"key": "gc1", "client": "127.0.0.1", "request": req["request"]}


def test_unknown_domain_is_never_reported_off(lab: Lab, key: Path) -> None:
    lab.add_key("wide", Scope("domains", ("ghost",)))
    wide = lab.tmp / "wide.guest.key"
    for action in ("status", "off"):
        rc, out, err = run_agent(agent_args(lab, wide, action, "ghost"))
        assert rc == 1, (action, out)
        assert "no host knows domain 'ghost'" in err


def test_off_of_a_stopped_managed_guest_is_off(lab: Lab, key: Path) -> None:
    lab.cluster.manage("guest1")
    lab.world.doms = [d for d in lab.world.doms if d.name != "guest1"]  # transient, stopped
    rc, out, _ = run_agent(agent_args(lab, key, "status", "guest1"))
    assert (rc, out.strip()) == (2, "Status: OFF")
    rc, out, _ = run_agent(agent_args(lab, key, "off", "guest1"))
    assert (rc, out.strip()) == (0, "Success: Already OFF")


def test_cluster_aware_off_on_and_reboot(lab: Lab, key: Path) -> None:
    lab.cluster.manage("guest2")
    rc, _, err = run_agent(agent_args(lab, key, "off", "guest2", hosts=["host1"]))
    assert rc == 0, err
    assert lab.cluster.roles == [("guest2", "Stopped")]
    assert lab.world.find("host2", "guest2") is None
    rc, out, err = run_agent(agent_args(lab, key, "on", "guest2", hosts=["host3"]))
    assert (rc, out.strip()) == (0, "Success: Powered ON"), err
    assert lab.cluster.roles[-1] == ("guest2", "Started")
    rc, out, err = run_agent(agent_args(lab, key, "reboot", "guest2"))
    assert (rc, out.strip()) == (0, "Success: Rebooted"), err
    assert lab.cluster.roles[-2] == ("guest2", "Stopped")
    # the 'on' half runs after the answer, once the cluster saw it stop
    assert wait_until(lambda: lab.cluster.roles[-1] == ("guest2", "Started"), 5)


def test_unmanaged_persistent_domain_reboot_and_on(lab: Lab, key: Path) -> None:
    lab.world.add("pers", "host2", persistent=True)
    k = lab.add_key("p", Scope("domains", ("pers",)))
    rc, _, err = run_agent(agent_args(lab, k, "reboot", "pers", hosts=["host3"]))
    assert rc == 0, err
    assert wait_until(lambda: lab.world.find("host2", "pers").active)  # type: ignore[union-attr]
    rc, _, _ = run_agent(agent_args(lab, k, "off", "pers"))
    assert rc == 0
    rc, out, _ = run_agent(agent_args(lab, k, "status", "pers"))
    assert (rc, out.strip()) == (2, "Status: OFF")
    rc, out, err = run_agent(agent_args(lab, k, "on", "pers"))
    assert (rc, out.strip()) == (0, "Success: Powered ON"), err


def test_scope_denies_other_domains_and_logs_it(lab: Lab, key: Path) -> None:
    for action in ("status", "off", "on", "reboot"):
        rc, _, err = run_agent(agent_args(lab, key, action, "other"))
        assert rc == 1
        assert "may not" in err and "other" in err
    assert lab.world.find("host2", "other").active  # type: ignore[union-attr]
    denied = [e for e in lab.all_audit() if e.get("result") == "denied"]
    assert {e["action"] for e in denied} == {"status", "off", "on", "reboot"}
    assert all(e["key"] == "gc1" and e["plug"] == "other" for e in denied)
    # list shows only what the key may see
    rc, out, _ = run_agent(agent_args(lab, key, "list"))
    assert rc == 0
    assert sorted(line.split(",")[0] for line in out.split()) == ["guest1", "guest2", "guest3"]
    rc, out, _ = run_agent(agent_args(lab, key, "list-status"))
    assert "guest1," in out and out.count(",ON") == 3


def test_tag_and_dc_scopes(lab: Lab, key: Path) -> None:
    lab.cluster.manage("guest1", tags=frozenset({"web"}))
    lab.cluster.manage("guest2", dc="qa")
    tag = lab.add_key("tagged", Scope("tag", ("web",)))
    dc = lab.add_key("qa", Scope("dc", ("qa",)))
    assert run_agent(agent_args(lab, tag, "status", "guest1"))[0] == 0
    assert run_agent(agent_args(lab, tag, "status", "guest2"))[0] == 1
    assert run_agent(agent_args(lab, dc, "status", "guest2"))[0] == 0
    assert run_agent(agent_args(lab, dc, "status", "guest1"))[0] == 1
    rc, out, _ = run_agent(agent_args(lab, tag, "list"))
    assert [x.split(",")[0] for x in out.split()] == ["guest1"]


def test_wrong_key_and_unknown_key_are_refused_and_logged(lab: Lab, key: Path) -> None:
    wrong = lab.tmp / "wrong.key"
    from kvmha.fence.keys import write_private

    write_private(wrong, agent.key_text("gc1", os.urandom(32)))
    rc, _, err = run_agent(agent_args(lab, wrong, "off", "guest1", hosts=["host1"]))
    assert rc == 1 and "authentication failed" in err
    write_private(wrong, agent.key_text("nobody", os.urandom(32)))
    rc, _, err2 = run_agent(agent_args(lab, wrong, "off", "guest1", hosts=["host1"]))
    # the same answer for an unknown key as for a wrong one: no oracle for key names
    assert rc == 1 and "authentication failed" in err2
    refused = [e for e in lab.audit_lines("host1") if e["result"] == "refused"]
    assert [e["code"] for e in refused] == ["bad-auth", "bad-auth"]
    assert "wrong MAC" in refused[0]["detail"] and "unknown key" in refused[1]["detail"]
    # a guest key cannot claim to be a host
    write_private(wrong, agent.key_text("@hosts", os.urandom(32)))
    rc, _, err = run_agent(agent_args(lab, wrong, "off", "guest1", hosts=["host1"]))
    assert rc == 1
    assert lab.world.offs == []
    refused = [e for e in lab.audit_lines("host1") if e["result"] == "refused"]
    assert len(refused) == 3 and {e["key"] for e in refused} == {"gc1", "nobody", "@hosts"}


def _frames(sock: socket.socket) -> dict[str, object]:
    return agent.read_frame(sock, agent.MAX_RESPONSE_FRAME, time.monotonic() + 5)


def test_replayed_exchange_is_refused(lab: Lab, key: Path) -> None:
    k = Key.load(str(key))
    port = lab.ports["host1"]
    body = {"action": "off", "plug": "guest1", "timeout": 5}
    # a recorded, valid exchange
    with socket.create_connection(("127.0.0.1", port)) as s:
        nc = os.urandom(32)
        hello = {"type": "hello", "proto": agent.PROTOCOL, "key": "gc1", "nc": nc.hex()}
        agent.send_frame(s, hello, time.monotonic() + 5)
        ns = bytes.fromhex(str(_frames(s)["ns"]))
        mac = agent.client_mac(k.secret, "gc1", nc, ns, body)
        req = {"type": "request", "body": body, "mac": mac.hex()}
        agent.send_frame(s, req, time.monotonic() + 5)
        assert _frames(s)["type"] == "response"
    assert lab.world.offs == [("host1", "guest1")]
    lab.world.add("guest1", "host1")  # back on
    # replay the client's side of it: the listener's fresh nonce makes the MAC wrong
    for target in ("host1", "host2"):
        with socket.create_connection(("127.0.0.1", lab.ports[target])) as s:
            agent.send_frame(s, hello, time.monotonic() + 5)
            assert _frames(s)["type"] == "challenge"
            agent.send_frame(s, req, time.monotonic() + 5)
            answer = _frames(s)
            assert answer["type"] == "refused"
    assert lab.world.offs == [("host1", "guest1")]
    reasons = [e["detail"] for e in lab.all_audit() if e["result"] == "refused"]
    assert "replayed request" in reasons  # host1 remembers the MAC it accepted
    assert any("wrong key or replayed" in r for r in reasons)


def test_forged_answer_is_not_believed(lab: Lab, key: Path) -> None:
    """A fake listener without the key cannot make the agent report success."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    import threading

    def fake() -> None:
        c, _ = srv.accept()
        with c:
            agent.read_frame(c, 4096, time.monotonic() + 5)
            agent.send_frame(c, {"type": "challenge", "ns": "00" * 32}, time.monotonic() + 5)
            agent.read_frame(c, 4096, time.monotonic() + 5)
            body = {"status": "ok", "state": "off"}
            agent.send_frame(
                c, {"type": "response", "body": body, "mac": "00" * 32}, time.monotonic() + 5
            )

    t = threading.Thread(target=fake)
    t.start()
    rc, _, err = run_agent(["-o", "off", "-n", "guest1", "-k", str(key), "-a", f"127.0.0.1:{port}"])
    t.join(5)
    srv.close()
    assert rc == 1 and "valid MAC" in err


def test_failover_to_the_next_listener(lab: Lab, key: Path) -> None:
    lab.stop_host("host1")
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: connection refused
    argv = [
        "-o",
        "off",
        "-n",
        "guest3",
        "-k",
        str(key),
        "-v",
        "-a",
        f"127.0.0.1:{lab.ports['host1']},127.0.0.1:{dead_port}," f"127.0.0.1:{lab.ports['host2']}",
    ]
    lab.listeners["host2"].cfg.peers.pop("host1")  # host1 is gone from the peers too
    lab.listeners["host3"].cfg.peers.pop("host1", None)
    lab.cluster.fence("host1")  # and fenced: a member host that does not answer must be
    rc, out, err = run_agent(argv)
    assert rc == 0, err
    assert err.count("cannot connect") == 2
    assert ("host3", "guest3") in lab.world.offs


def test_dead_host_not_fenced_means_no_answer(lab: Lab, key: Path) -> None:
    """A domain that may run on a dead, unfenced host is neither on nor off."""
    # guest1 ran on host1; host1 dies (its listener stops answering)
    run_agent(agent_args(lab, key, "status", "guest1", hosts=["host2"]))  # seen on host1
    lab.stop_host("host1")
    rc, _, err = run_agent(agent_args(lab, key, "status", "guest1", hosts=["host2"]))
    assert rc == 1 and "host1 does not answer" in err and "not recorded as fenced" in err
    rc, _, err = run_agent(agent_args(lab, key, "off", "guest1", hosts=["host2"]))
    assert rc == 1
    # the host cluster fences host1: now the domain is off with it
    lab.cluster.fence("host1")
    rc, out, err = run_agent(agent_args(lab, key, "off", "guest1", hosts=["host2"]))
    assert (rc, out.strip()) == (0, "Success: Already OFF"), err
    rc, out, _ = run_agent(agent_args(lab, key, "status", "guest1", hosts=["host3"]))
    assert (rc, out.strip()) == (2, "Status: OFF")


def test_local_libvirt_down_falls_back_to_peers_for_status(lab: Lab, key: Path) -> None:
    lab.world.down.add("host1")
    rc, out, err = run_agent(agent_args(lab, key, "status", "guest2", hosts=["host1"]))
    assert (rc, out.strip()) == (0, "Status: ON"), err
    rc, _, err = run_agent(agent_args(lab, key, "status", "guest1", hosts=["host1"]))
    assert rc == 1 and "host1" in err  # its own libvirt cannot say: no 'off'


def test_monitor_and_validate(lab: Lab, key: Path) -> None:
    assert run_agent(agent_args(lab, key, "monitor"))[0] == 0
    assert run_agent(agent_args(lab, key, "validate-all"))[0] == 0
    rc, _, err = run_agent(["-o", "monitor", "-k", str(key), "-a", "127.0.0.1:1"])
    assert rc == 1


def test_host_key_actions_are_not_for_guests(lab: Lab, key: Path) -> None:
    k = Key.load(str(key))
    for action in ("local-off", "locate", "install-key", "keys"):
        ans = agent.exchange(
            "127.0.0.1", lab.ports["host1"], k, {"action": action, "plug": "guest1"}, 2, 5
        )
        assert ans["status"] == "error" and "unknown action" in ans["message"]
    assert lab.world.offs == []
    ans = agent.exchange("127.0.0.1", lab.ports["host1"], HOST_KEY, {"action": "keys"}, 2, 5)
    assert [k["name"] for k in ans["keys"]] == ["gc1"]


def test_loose_key_file_is_refused_with_the_reason(lab: Lab, key: Path) -> None:
    os.chmod(key, 0o644)
    rc, _, err = run_agent(agent_args(lab, key, "status", "guest1"))
    assert rc == 1
    assert "mode 0644" in err and "chmod 0600" in err
    # on the listener: a loose key file is ignored, and the reason logged
    path = Path(lab.listeners["host1"].cfg.keys_dir) / "gc1.key"
    os.chmod(path, 0o640)
    os.utime(path.parent)  # directory changed: the listener rereads
    os.chmod(key, 0o600)
    lst = lab.listeners["host1"]
    lst.keys.reload(force=True)
    assert "gc1" not in [k.key.name for k in lst.keys.all()]
    assert any("mode 0640" in why for why in lst.keys.problems().values())
    rc, _, err = run_agent(agent_args(lab, key, "status", "guest1", hosts=["host1"]))
    assert rc == 1 and "authentication failed" in err
    assert lab.audit_lines("host1")[-1]["code"] == "bad-auth"


def test_an_off_from_before_a_reboot_does_not_cancel_its_power_on(lab: Lab, key: Path) -> None:
    """The listener handling a reboot of a managed guest that another host runs (or ran:
    an earlier attempt already powered it off) may have an old off of the same domain on
    record, from a request long finished. Only an off asked after this reboot began
    cancels its power-on; a stale one left guests Stopped after a successful reboot (a
    real guest cluster's hung member, fenced on the retry)."""
    from kvmha.fence import rule

    lab.cluster.manage("guest3")
    uuid = next(d.uuid for d in lab.world.doms if d.name == "guest3")
    host1 = lab.listeners["host1"]
    host1._off_requests[rule.norm_uuid(uuid)] = (time.time() - 600, "an-old-request")
    rc, out, err = run_agent(agent_args(lab, key, "reboot", "guest3", hosts=["host1"]))
    assert (rc, out.strip()) == (0, "Success: Rebooted"), err
    assert wait_until(
        lambda: lab.cluster.roles[-1:] == [("guest3", "Started")], 5
    ), lab.cluster.roles
    # (an off asked after a reboot began still wins: test_fence_safety.py)
