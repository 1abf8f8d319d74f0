"""fence_kvmha + kvmha-fence-listener in a real 3-host lab, driven by a real guest cluster.

The guest cluster's nodes guest1..3 (namespaces at 10.77.0.201..203, corosync + pacemaker)
are paired with the lab's real domains guest1..3, which run under ocf:kvmha:Guest on the
host cluster. Its stonith device is fence_kvmha with every host's listener in ``ip``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import libvirt
import pytest

from kvmha.fence.keys import GENERATION_SEP
from kvmha.process import clean_env, run
from kvmha.tools.lab.guestcluster import GuestCluster
from kvmha.tools.lab.lab import Lab

from .helpers import powered_libvirts, wait_for

pytestmark = pytest.mark.lab
GUEST_KEY = "/etc/kvmha/gcluster-fence.key"
Setup = tuple[Lab, GuestCluster]


def instances(lab: Lab, guest: str) -> list[tuple[str, int]]:
    """(host, libvirt domain ID) wherever libvirt runs guest; a new ID = a new boot."""
    found = []
    for h, conn in powered_libvirts(lab):
        try:
            dom = conn.lookupByName(guest)
            if dom.isActive():
                found.append((h, dom.ID()))
        except libvirt.libvirtError:
            pass
    return found


def audit(lab: Lab) -> list[dict[str, Any]]:
    out = []
    for h in lab.cfg.host_names():
        f = lab.cfg.host_dir(h) / "var/log/kvmha/fence-audit.log"
        if f.exists():
            out += [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    return out


def key_name(record: dict[str, Any]) -> str:
    """The key's name in an audit record (its wire name is NAME:GENERATION)."""
    return str(record.get("key", "")).split(GENERATION_SEP)[0]


def settle(lab: Lab, gc: GuestCluster) -> None:
    """Every domain running under the host cluster, every guest-cluster node back."""
    for g in lab.cfg.guest_names():
        lab.run_in(lab_host(lab), ["crm_resource", "--cleanup", "-r", g], check=False)
    wait_for(
        "every guest running",
        lambda: all(len(instances(lab, g)) == 1 for g in lab.cfg.guest_names()),
        120,
    )
    # a member the guest cluster fenced stops its own pacemaker, at once or a little
    # later ("we were allegedly just fenced"): restart each one once it shows offline
    restarted: set[str] = set()

    def complete() -> bool:
        for node in gc.nodes:
            if node not in restarted and not node_online(gc, node):
                gc.restart(node)
                restarted.add(node)
        return gc.all_online()

    wait_for("the guest cluster complete", complete, 240)
    wait_for("its fence device started", gc.device_started, 60)


def lab_host(lab: Lab) -> str:
    return next(h for h in lab.cfg.host_names() if lab.powered(h))


def node_online(gc: GuestCluster, node: str) -> bool:
    st = gc.state()
    return bool(st and st.nodes.get(node) and st.nodes[node].online)


def stonith(gc: GuestCluster, via: str, *args: str) -> Any:
    return gc.run_in(via, ["stonith_admin", *args, "--timeout", "90"], timeout=120, check=False)


def fence_and_check_rebooted(lab: Lab, gc: GuestCluster, guest: str, via: str) -> None:
    before = instances(lab, guest)
    assert len(before) == 1, before
    r = stonith(gc, via, "--reboot", guest)
    assert r.returncode == 0, r.stderr + r.stdout
    # the old instance is gone at once, and the host cluster runs the guest again
    assert before[0] not in instances(lab, guest)
    wait_for(f"{guest} running again", lambda: len(instances(lab, guest)) == 1, 90)
    ev = [e for e in audit(lab) if e.get("action") == "reboot" and e.get("plug") == guest]
    assert ev and ev[-1]["result"] == "off" and ev[-1]["key"] == "gcluster"
    assert ev[-1]["peer"].startswith("10.77.0.20")


@pytest.fixture
def setup(fence_lab: Setup) -> Setup:
    settle(*fence_lab)
    return fence_lab


def test_listener_on_every_host_and_fence_test(setup: Setup) -> None:
    lab, _gc = setup
    for h in lab.cfg.host_names():
        out = lab.run_in(h, ["ss", "-ltn"]).stdout
        assert ":1230 " in out, h
    r = lab.run_in(
        "host2",
        [
            "/usr/bin/python3",
            "-I",
            "-m",
            "kvmha.tools.fence_cli",
            "fence",
            "test",
            "guest1",
            "--json",
        ],
    )
    rows = json.loads(r.stdout)
    assert [x["status"] for x in rows] == ["ok"] * 3
    assert all(x["state"] == "on" for x in rows)


def test_metadata_through_stonith_admin_and_pcs(setup: Setup) -> None:
    lab, gc = setup
    meta = gc.run_in("guest1", ["stonith_admin", "-M", "-a", "fence_kvmha"]).stdout
    assert 'name="fence_kvmha"' in meta and 'name="key_file"' in meta
    described = lab.run_in("host1", ["pcs", "stonith", "describe", "fence_kvmha"]).stdout
    assert "ip (required)" in described and "key_file" in described


def test_stonith_admin_reboot_powers_the_paired_domain_off(setup: Setup) -> None:
    lab, gc = setup
    fence_and_check_rebooted(lab, gc, "guest1", "guest2")


def test_reboot_right_after_live_migration(setup: Setup) -> None:
    lab, gc = setup
    guest = "guest2"
    ((src, _id),) = instances(lab, guest)
    dst = next(h for h in lab.cfg.host_names() if h != src)
    lab.run_in("host1", ["crm_resource", "--move", "-r", guest, "--node", dst])
    try:
        # migrated: libvirt runs it on dst only, and the host cluster has finished the move
        # (fencing while Pacemaker's migrate_from still waits for the domain is another case)
        wait_for(
            f"{guest} migrated to {dst}",
            lambda: [h for h, _ in instances(lab, guest)] == [dst]
            and (st := lab.cluster_state()) is not None
            and st.running_on(guest) == dst,
            90,
            0.1,
        )
        fence_and_check_rebooted(lab, gc, guest, "guest3")
        ev = [e for e in audit(lab) if e.get("action") == "reboot" and e.get("plug") == guest]
        assert max(ev, key=lambda e: e["time"])["hosts"] == [dst]  # found where it runs now
    finally:
        lab.run_in("host1", ["crm_resource", "--clear", "-r", guest], check=False)


def test_off_keeps_it_off_and_on_brings_it_back(setup: Setup) -> None:
    lab, gc = setup
    guest = "guest3"
    r = stonith(gc, "guest1", "--fence", guest)  # stonith_admin's "off"
    assert r.returncode == 0, r.stderr
    assert instances(lab, guest) == []
    role = lab.run_in("host1", ["crm_resource", "-r", guest, "--meta", "-g", "target-role"])
    assert role.stdout.strip() == "Stopped"
    time.sleep(8)  # nothing resurrects it
    assert instances(lab, guest) == []
    r = gc.run_in(
        "guest1",
        [
            "fence_kvmha",
            "-o",
            "status",
            "-n",
            guest,
            "-k",
            GUEST_KEY,
            "-a",
            gc.listener_addresses(),
        ],
        check=False,
    )
    assert (r.returncode, r.stdout.strip()) == (2, "Status: OFF")
    r = gc.run_in(
        "guest1",
        [
            "fence_kvmha",
            "-o",
            "on",
            "-n",
            guest,
            "-k",
            GUEST_KEY,
            "-a",
            gc.listener_addresses(),
            "--power-timeout",
            "60",
        ],
        timeout=90,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert len(instances(lab, guest)) == 1


def test_scope_and_wrong_key_are_refused_and_logged(setup: Setup) -> None:
    lab, gc = setup
    r = lab.run_in(
        "host1",
        [
            "/usr/bin/python3",
            "-I",
            "-m",
            "kvmha.tools.fence_cli",
            "fence",
            "key",
            "create",
            "only1",
            "--domains",
            "guest1",
            "--out",
            "/tmp/only1.key",
        ],
        check=False,
    )
    assert r.returncode == 0, r.stderr
    key = lab.run_in("host1", ["cat", "/tmp/only1.key"]).stdout
    run(
        gc._nsenter("guest2", ["sh", "-c", "umask 077; cat > /tmp/only1.key"]),
        input=key,
        env=clean_env(),
    )
    addrs = gc.listener_addresses()
    before = instances(lab, "guest2")
    for action in ("status", "off", "reboot"):
        r = gc.run_in(
            "guest2",
            ["fence_kvmha", "-o", action, "-n", "guest2", "-k", "/tmp/only1.key", "-a", addrs],
            check=False,
        )
        assert r.returncode == 1 and "may not" in r.stderr, (action, r.stderr)
    r = gc.run_in("guest2", ["fence_kvmha", "-o", "list", "-k", "/tmp/only1.key", "-a", addrs])
    assert [x.split(",")[0] for x in r.stdout.split()] == ["guest1"]
    assert instances(lab, "guest2") == before
    # keys go by NAME:GENERATION on the wire (docs/fence.md), and so in the audit log
    denied = [e for e in audit(lab) if key_name(e) == "only1" and e["result"] == "denied"]
    assert {e["action"] for e in denied} == {"status", "off", "reboot"}
    # a wrong secret under a known name
    bad = key.replace(key.split("secret=")[1][:8], "00000000")
    run(
        gc._nsenter("guest2", ["sh", "-c", "umask 077; cat > /tmp/bad.key"]),
        input=bad,
        env=clean_env(),
    )
    r = gc.run_in(
        "guest2",
        ["fence_kvmha", "-o", "off", "-n", "guest1", "-k", "/tmp/bad.key", "-a", addrs],
        check=False,
    )
    assert r.returncode == 1 and "authentication failed" in r.stderr
    refused = [e for e in audit(lab) if key_name(e) == "only1" and e["result"] == "refused"]
    assert len(refused) >= 3  # one per listener tried
    assert len(instances(lab, "guest1")) == 1


def test_power_cut_of_the_first_listener_uses_the_next(setup: Setup) -> None:
    lab, gc = setup
    lab.power_cut("host1")
    try:
        wait_for(
            "host1 fenced by the host cluster",
            lambda: (
                (st := lab.cluster_state()) is not None
                and "host1" not in st.online_nodes()
                and all(len(instances(lab, g)) == 1 for g in lab.cfg.guest_names())
            ),
            120,
        )
        guest = "guest1"
        fence_and_check_rebooted(lab, gc, guest, "guest3")
        ev = [e for e in audit(lab) if e.get("action") == "reboot" and e.get("plug") == guest]
        assert ev[-1]["listener"] == "host2"  # 10.77.0.11 refused, 10.77.0.12 served it
    finally:
        lab.power_on("host1")
        wait_for(
            "host1 back",
            lambda: (st := lab.cluster_state()) is not None and "host1" in st.online_nodes(),
            120,
        )
