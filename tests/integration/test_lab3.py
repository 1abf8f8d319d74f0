"""The 3-host lab is real: quorum, live migration, fencing by power cut and isolation."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import libvirt
import pytest

from kvmha.tools.lab import libvirtconf
from kvmha.tools.lab.lab import Lab

from .helpers import kvmha, wait_for

pytestmark = pytest.mark.lab


def fence_events(lab: Lab, host: str) -> list[dict[str, Any]]:
    return [
        e
        for e in lab.power_events()
        if e["host"] == host and e["origin"] == "fence" and e["result"] == "ok"
    ]


def online(lab: Lab, host: str) -> bool:
    st = lab.cluster_state()
    return bool(st and st.quorate and st.nodes.get(host) and st.nodes[host].online)


def test_three_hosts_online_and_quorate(lab3: Lab) -> None:
    st = lab3.cluster_state()
    assert st is not None and st.quorate and st.dc in ("host1", "host2", "host3")
    assert st.online_nodes() == ["host1", "host2", "host3"]
    # every host runs its own daemons in its own namespaces
    for host in lab3.cfg.host_names():
        r = lab3.run_in(
            host, ["sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '; " "ps -e -o comm="]
        )
        lines = r.stdout.splitlines()
        assert lines[0] == host
        assert "kvmha.tools.lab.hostinit init" in lines[1]
        for daemon in ("corosync", "pacemakerd", "libvirtd", "virtlogd"):
            assert daemon in lines[2:], f"{daemon} missing on {host}"
    quorum = lab3.run_in("host1", ["corosync-quorumtool", "-s"]).stdout
    assert "Quorate:          Yes" in quorum
    assert "Total votes:      3" in quorum


def test_guests_run_under_pacemaker_and_answer(lab3: Lab) -> None:
    st = lab3.cluster_state()
    assert st is not None
    assert st.resources["lab-power"].active
    for guest in lab3.cfg.guest_names():
        host = st.running_on(guest)
        assert host, f"{guest} is not running"
        ip = lab3.cfg.guest_address(guest)
        # the guest's HTTP service, seen from another host across the lab network
        other = next(h for h in lab3.cfg.host_names() if h != host)
        r = lab3.run_in(
            other,
            [
                "/usr/bin/python3",
                "-c",
                f"import urllib.request;print(urllib.request.urlopen("
                f"'http://{ip}/health', timeout=5).read().decode())",
            ],
        )
        assert r.stdout.strip() == f"ok {guest}"
        # the QEMU guest agent, through the libvirt of the host that runs it
        r = lab3.run_in(host, ["virsh", "qemu-agent-command", guest, '{"execute":"guest-ping"}'])
        assert json.loads(r.stdout) == {"return": {}}


def test_status_json_shape(lab3: Lab) -> None:
    r = kvmha("lab", "status", "--json", "--labdir", str(lab3.labdir))
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["labdir"] == str(lab3.labdir)
    assert [h["name"] for h in st["hosts"]] == ["host1", "host2", "host3"]
    assert all(h["state"] == "online" and h["address"] for h in st["hosts"])
    assert [g["name"] for g in st["guests"]] == ["guest1", "guest2", "guest3", "guest4"]
    assert all(g["state"] == "running" and g["host"] for g in st["guests"])
    assert "last_fence" in st


def test_live_migration_between_hosts(lab3: Lab) -> None:
    """A guest moves from host1 to host2 through libvirt while it keeps running."""
    cfg = lab3.cfg
    name = "guest9"  # not a Pacemaker resource: this test owns it
    xml = libvirtconf.guest_domain_xml(
        cfg, name, str(cfg.image_dir / "vmlinuz"), str(cfg.image_dir / "initrd.img")
    )
    src = libvirt.open(cfg.libvirt_uri("host1"))
    dst = libvirt.open(cfg.libvirt_uri("host2"))
    offset = lab3.serial_log_size(name)
    dom = src.createXML(xml, 0)
    try:
        wait_for(f"{name} ready", lambda: lab3.guest_ready_since(name, offset), 60)
        t0 = time.monotonic()
        dom.migrateToURI3(
            "qemu+tcp://host2/system", {}, libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
        )
        took = time.monotonic() - t0
        moved = dst.lookupByName(name)
        assert moved.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        with pytest.raises(libvirt.libvirtError):
            src.lookupByName(name)
        # the same boot goes on: its heartbeat continues and it never booted again
        after = lab3.serial_log_size(name)
        wait_for(
            "a heartbeat after the migration",
            lambda: b"HEARTBEAT" in read_from(lab3, name, after),
            15,
        )
        assert read_from(lab3, name, offset).count(b"KVMHA-GUEST-USERSPACE") == 1
        ip = cfg.guest_address(name)
        r = lab3.run_in(
            "host3",
            [
                "/usr/bin/python3",
                "-c",
                f"import urllib.request;print(urllib.request.urlopen("
                f"'http://{ip}/health', timeout=5).read().decode())",
            ],
        )
        assert r.stdout.strip() == f"ok {name}"
        print(f"live migration host1 -> host2 took {took:.2f} s")
    finally:
        for conn in (src, dst):
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(name).destroy()
            conn.close()


def read_from(lab: Lab, guest: str, offset: int) -> bytes:
    with open(lab.cfg.guests_dir / f"{guest}.serial.log", "rb") as f:
        f.seek(offset)
        return f.read()


def test_power_cut_is_fenced_and_host_rejoins(lab3: Lab) -> None:
    victim = "host3"
    st = lab3.cluster_state()
    assert st is not None
    its_guests = [g for g in lab3.cfg.guest_names() if st.running_on(g) == victim]
    fenced_before = len(fence_events(lab3, victim))
    r = kvmha("lab", "power-cut", victim, "--labdir", str(lab3.labdir))
    assert r.returncode == 0, r.stderr
    assert not lab3.powered(victim)
    wait_for("the fence of host3", lambda: len(fence_events(lab3, victim)) > fenced_before, 60)

    def fenced_in_history() -> bool:
        st = lab3.cluster_state()
        return bool(st and any(e.target == victim and e.status == "success" for e in st.fencing))

    wait_for("host3 in the fencing history", fenced_in_history, 30)
    r = kvmha("lab", "status", "--json", "--labdir", str(lab3.labdir))
    status = json.loads(r.stdout)
    assert next(h for h in status["hosts"] if h["name"] == victim)["state"] == "fenced"
    assert status["last_fence"]["target"] == victim
    for g in its_guests:
        wait_for(
            f"{g} on a surviving host",
            lambda g=g: (lambda s: s and s.running_on(g) not in (None, victim))(
                lab3.cluster_state()
            ),
            90,
        )
    r = kvmha("lab", "power-on", victim, "--labdir", str(lab3.labdir))
    assert r.returncode == 0, r.stderr
    wait_for("host3 back online", lambda: online(lab3, victim), 90)


def test_isolated_host_loses_quorum_and_is_fenced(lab3: Lab) -> None:
    victim = "host2"
    wait_for("all hosts online", lambda: all(online(lab3, h) for h in lab3.cfg.host_names()), 90)
    log = lab3.cfg.host_dir(victim) / "var/log/corosync/corosync.log"
    log_offset = log.stat().st_size
    fenced_before = len(fence_events(lab3, victim))
    assert kvmha("lab", "isolate", victim, "--labdir", str(lab3.labdir)).returncode == 0
    try:
        wait_for("the fence of host2", lambda: len(fence_events(lab3, victim)) > fenced_before, 60)
        with open(log, "rb") as f:
            f.seek(log_offset)
            text = f.read().decode(errors="replace")
        assert "non-primary component" in text or "quorum lost" in text.lower(), text[-2000:]
        assert not lab3.powered(victim)
    finally:
        assert kvmha("lab", "rejoin", victim, "--labdir", str(lab3.labdir)).returncode == 0
    assert kvmha("lab", "power-on", victim, "--labdir", str(lab3.labdir)).returncode == 0
    wait_for("host2 back online", lambda: online(lab3, victim), 90)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["power-cut", "host9"], "unknown host 'host9'"),
        (["exec", "nohost", "--", "true"], "unknown host 'nohost'"),
        (["up", "--hosts", "2", "--guests", "3"], "is up with 3 hosts"),
        (["power-on", "host1"], "host1 is already powered on"),
        (["rejoin", "host1"], "host1 is not isolated"),
    ],
)
def test_bad_input_gets_one_clear_line(lab3: Lab, args: list[str], message: str) -> None:
    r = kvmha("lab", args[0], "--labdir", str(lab3.labdir), *args[1:])
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("kvmha: error: ")
    assert all(online(lab3, h) for h in ("host1",))


def test_hosts_out_of_range(lab3: Lab) -> None:
    r = kvmha("lab", "up", "--hosts", "6", "--labdir", str(lab3.labdir))
    assert r.returncode == 2
    assert "--hosts" in r.stderr and "Traceback" not in r.stderr


def test_exec_passes_exit_code(lab3: Lab) -> None:
    r = kvmha(
        "lab", "exec", "--labdir", str(lab3.labdir), "host2", "--", "sh", "-c", "hostname; exit 7"
    )
    assert r.returncode == 7
    assert r.stdout.strip() == "host2"
