"""Fault suite: the fence listener of one host is down while the guest cluster fences.

The guest cluster's fence device lists host1's listener first. With it hung (stopped:
connections are accepted and never answered) or killed (the host restarts it a second
later, as systemd would), fence_kvmha goes on to the next address and the fence
succeeds through another host."""

from __future__ import annotations

import pytest
from integration.test_fence_lab import Setup, audit, fence_and_check_rebooted, settle

from kvmha.tools.lab import faults

pytestmark = pytest.mark.lab


@pytest.fixture()
def setup(fence_lab: Setup) -> Setup:
    settle(*fence_lab)
    return fence_lab


@pytest.mark.parametrize("how", ["STOP", "KILL"])
def test_listener_down_on_one_host_while_the_guest_cluster_fences(setup: Setup, how: str) -> None:
    lab, gc = setup
    pid = faults.daemon_pid(lab, "host1", "fence-listener")
    lab.run_in("host1", ["kill", f"-{how}", pid])
    try:
        fence_and_check_rebooted(lab, gc, "guest2", "guest3")
        ev = [e for e in audit(lab) if e.get("action") == "reboot" and e.get("plug") == "guest2"]
        if how == "STOP":
            assert ev[-1]["listener"] != "host1"  # the hung listener never answered
    finally:
        if how == "STOP":
            lab.run_in("host1", ["kill", "-CONT", pid], check=False)
