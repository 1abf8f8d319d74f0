"""A one-host lab: a quorate single-node cluster that runs a guest under Pacemaker."""

from __future__ import annotations

import pytest

from kvmha.tools.lab.lab import Lab

pytestmark = pytest.mark.lab


def test_single_host_runs_its_guest(lab1: Lab) -> None:
    st = lab1.cluster_state()
    assert st is not None and st.quorate and st.online_nodes() == ["host1"]
    assert st.running_on("guest1") == "host1"
    assert lab1.guest_ready_since("guest1", 0)
    # host1's libvirt is reachable from the machine through its socket
    r = lab1.run_in("host1", ["virsh", "domstate", "guest1"])
    assert r.stdout.strip() == "running"
