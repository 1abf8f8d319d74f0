"""Fault suite: the fence listener of one member host is down while the guest cluster
fences.

The rule for success (docs/fence.md) needs an answer from every member host of the host
cluster, or that host's fencing: a host that cannot answer may run a copy of the target.
With host1's listener hung (stopped: connections are accepted and never answered), a
reboot through the other listeners is an error that names host1, and it powers nothing
off for good (the early pause is undone). Once host1's listener answers again, the same
reboot succeeds. With the listener killed, host1's init restarts it a second later (as
systemd would) and the fence succeeds then, through any listener."""

from __future__ import annotations

from typing import Any

import pytest
from integration.helpers import wait_for
from integration.test_fence_lab import (
    Setup,
    audit,
    fence_and_check_rebooted,
    instances,
    settle,
    stonith,
)

from kvmha.errors import KvmhaError
from kvmha.tools.lab import faults
from kvmha.tools.lab.lab import Lab

pytestmark = pytest.mark.lab


@pytest.fixture()
def setup(fence_lab: Setup) -> Setup:
    settle(*fence_lab)
    return fence_lab


def _reboots(lab: Lab, guest: str) -> list[dict[str, Any]]:
    return [e for e in audit(lab) if e.get("action") == "reboot" and e.get("plug") == guest]


def test_a_hung_listener_on_a_member_host_fails_the_fence_until_it_answers(
    setup: Setup,
) -> None:
    lab, gc = setup
    # a guest that host1 does not run: the other hosts can reach its only copy
    guest = next(g for g in lab.cfg.guest_names() if instances(lab, g)[0][0] != "host1")
    via = next(n for n in gc.nodes if n != guest)
    earlier = _reboots(lab, guest)  # audit() reads host by host: compare records, not places
    pid = faults.daemon_pid(lab, "host1", "fence-listener")
    lab.run_in("host1", ["kill", "-STOP", pid])
    try:
        r = stonith(gc, via, "--reboot", guest)
        assert r.returncode != 0, "a reboot succeeded while host1 could not answer"
        tried = [e for e in _reboots(lab, guest) if e not in earlier]
        assert tried, "no listener recorded the reboot"
        assert all(e["result"] == "error" and e["code"] == "host-unconfirmed" for e in tried)
        assert all("host1 does not answer" in str(e.get("detail")) for e in tried), tried
        assert all(e["listener"] != "host1" for e in tried)  # the hung one never answered
        # an error is not "nothing happened": the copy the answering hosts reach is
        # powered off, as asked, and the host cluster keeps the guest stopped
        assert instances(lab, guest) == []
        role = lab.run_in("host2", ["crm_resource", "-r", guest, "--meta", "-g", "target-role"])
        assert role.stdout.strip() == "Stopped"
    finally:
        lab.run_in("host1", ["kill", "-CONT", pid], check=False)
    # the guest cluster goes on fencing its lost member; once host1 answers, a reboot
    # succeeds and its power-on brings the guest back
    wait_for(f"{guest} running again", lambda: len(instances(lab, guest)) == 1, 300, 1.0)
    later = [e for e in _reboots(lab, guest) if e not in earlier and e not in tried]
    assert any(e["result"] == "off" for e in later), later


def test_a_killed_listener_is_restarted_and_the_fence_then_succeeds(setup: Setup) -> None:
    lab, gc = setup
    pid = faults.daemon_pid(lab, "host1", "fence-listener")
    lab.run_in("host1", ["kill", "-KILL", pid])

    def restarted() -> bool:
        try:
            again = faults.daemon_pid(lab, "host1", "fence-listener")
        except KvmhaError:
            return False
        return again != pid and ":1230 " in lab.run_in("host1", ["ss", "-ltn"]).stdout

    wait_for("host1's listener restarted by its init", restarted, 60)
    fence_and_check_rebooted(lab, gc, "guest2", "guest3")
