"""A real Debian guest as a Pacemaker Remote guest node of the host cluster.

Three hosts, one guest from the remote image variant (pacemaker-remote instead of
pacemaker), run by ocf:kvmha:Guest with ``meta remote-node=guest1-node``; nginx inside
it is a host-cluster resource (``web-guest1``, systemd:nginx) that may run only there.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmha.pcmk import ClusterState
from kvmha.tools.lab.guestexec import guest_exec, running_on
from kvmha.tools.lab.lab import Lab

from .helpers import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.heavy]
TEST_LABS = Path(os.environ.get("KVMHA_TEST_LABS", "/var/lib/kvmha-test"))
GUEST = "guest1"
NODE = "guest1-node"
SERVICE = "web-guest1"


def _progress(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


@pytest.fixture(scope="module")
def remote_lab() -> Iterator[Lab]:
    labdir = TEST_LABS / "remote"
    Lab(labdir, _progress).down(purge=True)
    lab = Lab(labdir, _progress)
    try:
        lab.up(3, 1, "Guest", 1000, guest_image="debian-remote")
        yield lab
    finally:
        Lab(labdir, _progress).down()


def serving(lab: Lab) -> ClusterState | None:
    st = lab.cluster_state()
    if st is None:
        return None
    node = st.nodes.get(NODE)
    if node is None or not node.online or st.running_on(SERVICE) != NODE:
        return None
    return st


def nginx_pid(lab: Lab) -> int:
    rc, out, _ = guest_exec(
        lab.cfg, GUEST, ["systemctl", "show", "-p", "MainPID", "--value", "nginx"]
    )
    assert rc == 0
    return int(out.strip())


def test_guest_node_runs_a_host_cluster_resource(remote_lab: Lab) -> None:
    lab = remote_lab
    st = wait_for("guest1-node online, nginx started in it", lambda: serving(lab), 600, 2.0)
    assert st.running_on(GUEST) in lab.cfg.host_names()
    assert nginx_pid(lab) > 0
    # crm_mon sees the guest node as a remote node
    r = lab.run_in("host1", ["crm_mon", "-1", "--output-as=xml"])
    assert f'name="{NODE}"' in r.stdout and 'type="remote"' in r.stdout
    # kvmha status shows it as a guest node with its resource, not as a host
    doc = json.loads(lab.run_in("host1", ["kvmha", "status", "--json"]).stdout)
    (node,) = [n for n in doc["guest_nodes"] if n["name"] == NODE]
    assert node["guest"] == GUEST and node["state"] == "online" and node["resources"], node
    assert NODE not in [h["name"] for h in doc["hosts"]]


def test_killed_service_is_recovered_inside_the_guest(remote_lab: Lab) -> None:
    lab = remote_lab
    wait_for("serving", lambda: serving(lab), 600, 2.0)
    host_before = running_on(lab.cfg, GUEST)
    pid = nginx_pid(lab)
    rc, _, err = guest_exec(lab.cfg, GUEST, ["systemctl", "kill", "-s", "KILL", "nginx"])
    assert rc == 0, err
    wait_for(
        "nginx restarted by the host cluster inside the guest",
        lambda: serving(lab) and nginx_pid(lab) not in (0, pid),
        180,
        2.0,
    )
    st = lab.cluster_state()
    assert st is not None
    assert running_on(lab.cfg, GUEST) == host_before  # the guest itself was not touched
    r = lab.run_in("host1", ["crm_failcount", "--query", "-r", SERVICE, "-N", NODE], check=False)
    assert "value=1" in r.stdout, r.stdout  # one failure, recovered in place
    lab.run_in("host1", ["crm_resource", "--cleanup", "-r", SERVICE], check=False)


def test_power_cut_of_its_host_restarts_guest_and_service_elsewhere(remote_lab: Lab) -> None:
    lab = remote_lab
    wait_for("serving", lambda: serving(lab), 600, 2.0)
    (host,) = running_on(lab.cfg, GUEST)
    events_before = len(lab.power_events())
    t0 = time.monotonic()
    lab.power_cut(host)
    try:
        st = wait_for(
            "guest1 and nginx back on another host",
            lambda: (s := serving(lab)) is not None and s.running_on(GUEST) != host and s,
            900,
            2.0,
        )
        took = time.monotonic() - t0
        assert st.running_on(GUEST) in lab.cfg.host_names()
        fenced = [
            e
            for e in lab.power_events()[events_before:]
            if e["host"] == host and e["origin"] == "fence"
        ]
        assert fenced, "the host was not fenced"
        assert running_on(lab.cfg, GUEST) == [st.running_on(GUEST)]
        print(f"power cut of {host} -> guest node and its nginx back in {took:.0f} s")
    finally:
        lab.power_on(host)
