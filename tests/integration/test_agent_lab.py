"""ocf:kvmha:Guest in the 3-host lab, under Pacemaker and run directly."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from kvmha.tools.lab import libvirtconf
from kvmha.tools.lab.lab import Lab

from .helpers import wait_for

pytestmark = pytest.mark.lab
AGENT = "/usr/lib/ocf/resource.d/kvmha/Guest"


def where(lab: Lab, guest: str) -> str | None:
    st = lab.cluster_state()
    return st.running_on(guest) if st else None


def running_everywhere(lab: Lab, guest: str, hosts: list[str] | None = None) -> list[str]:
    """The hosts whose libvirt runs guest: asked directly, not through the cluster."""
    found = []
    for h in hosts if hosts is not None else lab.cfg.host_names():
        if not lab.powered(h):
            continue
        conn = libvirt.open(lab.cfg.libvirt_uri(h))
        try:
            if conn.lookupByName(guest).state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                found.append(h)
        except libvirt.libvirtError:
            pass
        finally:
            conn.close()
    return found


def boots_since(lab: Lab, guest: str, offset: int) -> int:
    with open(lab.cfg.guests_dir / f"{guest}.serial.log", "rb") as f:
        f.seek(offset)
        return f.read().count(b"KVMHA-GUEST-USERSPACE")


def log_since(lab: Lab, guest: str, offset: int) -> str:
    with open(lab.cfg.guests_dir / f"{guest}.serial.log", "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def settled(lab: Lab) -> None:
    """Every guest running once, fresh fail counts, no action in flight."""
    for g in lab.cfg.guest_names():
        lab.run_in("host1", ["crm_resource", "--cleanup", "-r", g], check=False)
    wait_for(
        "every guest running and ready",
        lambda: all(where(lab, g) and lab.guest_ready_since(g, 0) for g in lab.cfg.guest_names()),
        120,
    )
    lab.run_in("host1", ["crm_resource", "--wait", "--timeout", "120"], timeout=130, check=False)


def test_metadata_through_pcs(lab3: Lab) -> None:
    meta = lab3.run_in("host1", [AGENT, "meta-data"]).stdout
    names = [p.get("name") for p in ET.fromstring(meta).iter("parameter")]
    described = lab3.run_in(
        "host1", ["pcs", "resource", "describe", "ocf:kvmha:Guest", "--full"]
    ).stdout
    for name in names:
        assert re.search(rf"^\s*{name}( \(.*?\))*:", described, re.M), name


def test_ocf_tester_on_a_real_domain(lab3: Lab) -> None:
    cfg = lab3.cfg
    xml = libvirtconf.guest_domain_xml(
        cfg, "guest8", str(cfg.image_dir / "vmlinuz"), str(cfg.image_dir / "initrd.img")
    )
    path = cfg.guests_dir / "guest8.xml"
    path.write_text(xml)
    r = lab3.run_in(
        "host1",
        [
            "ocf-tester",
            "-n",
            "t8",
            "-o",
            f"config={path}",
            "-o",
            "hypervisor=qemu:///system",
            "-o",
            "peer_uris=none",
            AGENT,
        ],
        timeout=600,
        check=False,
    )
    out = r.stdout + r.stderr
    failures = [line for line in out.splitlines() if line.startswith("* rc=")]
    # ocf-tester (resource-agents 4.12) checks meta-data against the OCF 1.0 DTD, which
    # rejects every OCF 1.1 feature; Pacemaker's own OCF 1.1 reference agent (Dummy) fails
    # that one check as well. The metadata is validated against the OCF 1.1 schema in the
    # unit tests. Every functional test must pass.
    assert failures == [
        "* rc=4: Your agent produces meta-data which does not conform to ra-api-1.dtd"
    ], out
    assert "Testing: start" in out or "Testing: monitor" in out or r.returncode == 1, out
    assert running_everywhere(lab3, "guest8") == []


OCFT_VIRTUALDOMAIN = "/usr/share/resource-agents/ocft/configs/VirtualDomain"


def test_resource_agents_ocft_cases_for_virtualdomain_pass_against_guest(lab3: Lab) -> None:
    """resource-agents' own ocft cases for VirtualDomain, unchanged but for the agent they
    point at (and the two parameters a lab host needs): every case passes. ocft names the
    resource "ocft" while the domain is guest7: resource id and domain name differ."""
    cfg = lab3.cfg
    xml = libvirtconf.guest_domain_xml(
        cfg, "guest7", str(cfg.image_dir / "vmlinuz"), str(cfg.image_dir / "initrd.img")
    )
    domain = cfg.guests_dir / "guest7.xml"
    domain.write_text(xml)
    theirs = Path(OCFT_VIRTUALDOMAIN).read_text()
    cases = [line for line in theirs.splitlines() if line.startswith("CASE ")]
    assert len(cases) >= 8, cases
    ours = (
        theirs.replace("Agent VirtualDomain", "Agent Guest")
        .replace("/usr/lib/ocf/resource.d/heartbeat", "/usr/lib/ocf/resource.d/kvmha")
        .replace("HangTimeout 20", "HangTimeout 90")  # TCG boots, a busy 2-core machine
        .replace("OCFT_config=/etc/libvirt/qemu/sle11-sp3.xml", f"OCFT_config={domain}")
        .replace(
            "CASE-BLOCK required_args\n\tEnv OCF_RESKEY_config=$OCFT_config",
            "CASE-BLOCK required_args\n\tEnv OCF_RESKEY_config=$OCFT_config"
            "\n\tEnv OCF_RESKEY_hypervisor=qemu:///system\n\tEnv OCF_RESKEY_peer_uris=none",
        )
    )
    assert ours.count("OCF_RESKEY_peer_uris=none") == 1, "their required_args block changed"
    confdir = cfg.guests_dir / "ocft"
    confdir.mkdir(exist_ok=True)
    (confdir / "Guest").write_text(ours)
    try:
        made = lab3.run_in("host1", ["ocft", "make", "-d", str(confdir), "Guest"], check=False)
        assert made.returncode == 0, made.stdout + made.stderr
        r = lab3.run_in("host1", ["ocft", "test", "Guest"], timeout=1200, check=False)
        out = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout + r.stderr)
        assert "FAILED" not in out and "ERROR" not in out, out
        for case in cases:
            name = case.split('"')[1]
            assert name in out, (name, out)
        assert running_everywhere(lab3, "guest7") == []
    finally:
        lab3.run_in("host1", ["ocft", "clean", "Guest"], check=False)
        with contextlib.suppress(libvirt.libvirtError):
            conn = libvirt.open(cfg.libvirt_uri("host1"))
            try:
                dom = conn.lookupByName("guest7")
                if dom.isActive():
                    dom.destroy()
            finally:
                conn.close()


def domain_id(lab: Lab, host: str, guest: str) -> int:
    conn = libvirt.open(lab.cfg.libvirt_uri(host))
    try:
        return int(conn.lookupByName(guest).ID())
    finally:
        conn.close()


def degraded_monitor(lab: Lab, host: str, guest: str) -> str | None:
    """The exit reason of a degraded (190) recurring monitor of guest that Pacemaker
    recorded on host, or None. Pacemaker 2.1 keeps it as the resource's last failure
    (lrm_rsc_op guest_last_failure_0, rc-code 190) without recovering the resource."""
    r = lab.run_in(host, ["cibadmin", "-Q", "-o", "status"])
    for node in ET.fromstring(r.stdout).iter("node_state"):
        if node.get("uname") != host:
            continue
        for rsc in node.iter("lrm_resource"):
            if rsc.get("id") != guest:
                continue
            for op in rsc.iter("lrm_rsc_op"):
                key = op.get("operation_key", "")
                recurring = key.startswith(f"{guest}_monitor_") and not key.endswith("_0")
                if recurring and op.get("rc-code") == "190":
                    return op.get("exit-reason", "")
    return None


def test_half_written_config_keeps_the_guest_running_and_reports_degraded(lab3: Lab) -> None:
    """An admin's editor has saved half of the guest's XML: the recurring monitors report
    the running guest as degraded (190) with the reason, never 6 (fatal everywhere) or 7.
    Pacemaker records it as a failed action that crm_mon shows, and leaves the guest where
    it runs; once the file is whole the agent answers 0, and a cleanup clears the record
    for good (no degraded result comes back)."""
    settled(lab3)
    guest = "guest1"
    host = where(lab3, guest)
    assert host is not None
    before = domain_id(lab3, host, guest)
    config = lab3.cfg.guests_dir / f"{guest}.xml"
    text = config.read_text()
    config.write_text(text[: len(text) // 2])
    try:
        reason = wait_for(
            "a degraded recurring monitor recorded by Pacemaker",
            lambda: degraded_monitor(lab3, host, guest),
            60,
            1.0,
        )
        assert "config" in reason and "not well-formed XML" in reason, reason
        shown = lab3.run_in(host, ["crm_mon", "-1", "--include=failures"]).stdout
        # "guest1 10s-interval monitor on host2 returned 'OCF_DEGRADED' (parameter ...)"
        assert "monitor on" in shown and "'OCF_DEGRADED' (parameter config" in shown, shown
        time.sleep(25)  # more recurring monitors, both depths: nothing moves or restarts
        assert running_everywhere(lab3, guest) == [host]
        assert domain_id(lab3, host, guest) == before
        print(f"monitor with a half-written config: 190, {reason!r}")
    finally:
        config.write_text(text)
    check = lab3.run_in(host, ["crm_resource", "-r", guest, "--force-check"], check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    lab3.run_in(host, ["crm_resource", "--cleanup", "-r", guest, "--node", host])
    time.sleep(25)
    assert degraded_monitor(lab3, host, guest) is None
    assert running_everywhere(lab3, guest) == [host]
    assert domain_id(lab3, host, guest) == before
    settled(lab3)


def test_stop_and_start_under_pacemaker(lab3: Lab) -> None:
    settled(lab3)
    host = where(lab3, "guest1")
    assert host
    lab3.run_in("host1", ["pcs", "resource", "disable", "guest1", "--wait=60"], timeout=90)
    assert running_everywhere(lab3, "guest1") == []
    offset = lab3.serial_log_size("guest1")
    lab3.run_in("host1", ["pcs", "resource", "enable", "guest1", "--wait=90"], timeout=120)
    wait_for("guest1 ready again", lambda: lab3.guest_ready_since("guest1", offset), 60)
    assert len(running_everywhere(lab3, "guest1")) == 1


def test_standby_live_migrates_without_a_reboot(lab3: Lab) -> None:
    settled(lab3)
    host = where(lab3, "guest2")
    assert host
    offset = lab3.serial_log_size("guest2")
    lab3.run_in("host1", ["pcs", "node", "standby", host])
    try:
        new = wait_for(
            "guest2 elsewhere",
            lambda: (lambda h: h if h and h != host else None)(where(lab3, "guest2")),
            120,
        )
        lab3.run_in("host1", ["crm_resource", "--wait", "--timeout", "120"], timeout=130)

        def logged(h: str, op: str) -> bool:
            log = lab3.cfg.host_dir(h) / "var/log/pacemaker/pacemaker.log"
            pattern = f"Result of {op} operation for guest2 on {h}: ok"
            return pattern in log.read_text(errors="replace")

        wait_for("migrate_to in the source's history", lambda: logged(host, "migrate_to"), 30)
        wait_for("migrate_from in the target's", lambda: logged(new, "migrate_from"), 30)
        assert boots_since(lab3, "guest2", offset) == 0  # it never stopped
        assert running_everywhere(lab3, "guest2") == [new]
    finally:
        lab3.run_in("host1", ["pcs", "node", "unstandby", host])


def test_killed_qemu_is_recovered(lab3: Lab) -> None:
    settled(lab3)
    host = where(lab3, "guest3")
    assert host
    offset = lab3.serial_log_size("guest3")
    pid = (lab3.cfg.host_dir(host) / "run/libvirt/qemu/guest3.pid").read_text().strip()
    lab3.run_in(host, ["kill", "-9", pid])
    wait_for("guest3 booted again", lambda: lab3.guest_ready_since("guest3", offset), 90)
    assert len(running_everywhere(lab3, "guest3")) == 1


def test_dead_service_in_the_guest_is_recovered(lab3: Lab) -> None:
    """Software HA: the guest runs, its HTTP service died; the deep monitor notices."""
    settled(lab3)
    host = where(lab3, "guest1")
    assert host
    offset = lab3.serial_log_size("guest1")
    cmd = {
        "execute": "guest-exec",
        "arguments": {"path": "/bin/sh", "arg": ["-c", "kill $(pidof httpd)"]},
    }
    lab3.run_in(host, ["virsh", "qemu-agent-command", "guest1", json.dumps(cmd)])
    wait_for(
        "guest1 restarted by the cluster", lambda: lab3.guest_ready_since("guest1", offset), 90
    )
    failures = lab3.run_in("host1", ["crm_mon", "-1", "--include=failures"]).stdout
    assert "HTTP GET http://10.77.0.101/health failed" in failures
    assert len(running_everywhere(lab3, "guest1")) == 1


@pytest.mark.parametrize(("mode", "via"), [("agent", "via=agent"), ("acpi", "via=acpi")])
def test_shutdown_mode_takes_effect(lab3: Lab, mode: str, via: str) -> None:
    settled(lab3)
    offset = lab3.serial_log_size("guest2")
    lab3.run_in("host1", ["pcs", "resource", "update", "guest2", f"shutdown_mode={mode}"])
    try:
        lab3.run_in("host1", ["crm_resource", "--wait", "--timeout", "60"], timeout=70)
        lab3.run_in("host1", ["pcs", "resource", "disable", "guest2", "--wait=60"], timeout=90)
        text = log_since(lab3, "guest2", offset)
        assert f"KVMHA-GUEST-POWEROFF {via}" in text, text[-500:]
    finally:
        lab3.run_in("host1", ["pcs", "resource", "update", "guest2", "shutdown_mode="])
        lab3.run_in("host1", ["pcs", "resource", "enable", "guest2", "--wait=90"], timeout=120)


def test_hung_and_killed_libvirtd(lab3: Lab) -> None:
    """Probes and monitors decide from the QEMU process; no guest ever runs twice."""
    settled(lab3)
    host = where(lab3, "guest3")
    assert host
    pidfile = lab3.cfg.host_dir(host) / "run/libvirt/libvirtd.pid"
    pid = pidfile.read_text().strip()
    # a hung libvirtd: every libvirt call blocks; the probe must still answer in time
    lab3.run_in(host, ["kill", "-STOP", pid])
    try:
        t0 = time.monotonic()
        lab3.run_in("host1", ["crm_resource", "--refresh", "-r", "guest3", "-N", host])
        wait_for(
            "the probe of guest3 on its host",
            lambda: "guest3_monitor_0"
            in lab3.run_in("host1", ["cibadmin", "-Q", "-o", "status"]).stdout,
            60,
        )
        lab3.run_in(
            "host1", ["crm_resource", "--wait", "--timeout", "90"], timeout=100, check=False
        )
        took = time.monotonic() - t0
        assert where(lab3, "guest3") == host
        others = [h for h in lab3.cfg.host_names() if h != host]
        assert running_everywhere(lab3, "guest3", others) == []
        print(f"probe with a hung libvirtd settled after {took:.1f} s")
    finally:
        lab3.run_in(host, ["kill", "-CONT", pid])
    # killed: the host's init restarts libvirtd (as systemd would); the guests run on
    lab3.run_in(host, ["kill", f"-{signal.SIGKILL.value}", pid])
    wait_for("a new libvirtd", lambda: pidfile.exists() and pidfile.read_text().strip() != pid, 30)
    time.sleep(12)  # a monitor interval
    assert where(lab3, "guest3") == host
    assert running_everywhere(lab3, "guest3") == [host]


def test_start_refuses_a_guest_running_on_a_peer(lab3: Lab) -> None:
    """The double-start guard: the domain already runs on host2, not under Pacemaker."""
    cfg = lab3.cfg
    name = "guest7"
    xml = libvirtconf.guest_domain_xml(
        cfg, name, str(cfg.image_dir / "vmlinuz"), str(cfg.image_dir / "initrd.img")
    )
    path = cfg.guests_dir / f"{name}.xml"
    path.write_text(xml)
    conn = libvirt.open(cfg.libvirt_uri("host2"))
    try:
        conn.createXML(xml, 0)
        # the peers are asked like a migration target: qemu+tcp://hostN/system
        r = lab3.run_in(
            "host1",
            [
                "env",
                f"OCF_RESKEY_config={path}",
                "OCF_ROOT=/usr/lib/ocf",
                "OCF_RESKEY_migration_transport=tcp",
                "OCF_RESOURCE_INSTANCE=g7",
                "OCF_RESKEY_CRM_meta_timeout=30000",
                AGENT,
                "start",
            ],
            check=False,
        )
        assert r.returncode == 1, r.stderr
        assert "host2" in r.stderr and "ocf-exit-reason:" in r.stderr
        assert running_everywhere(lab3, name) == ["host2"]
    finally:
        conn.close()
        for h in cfg.host_names():
            c = libvirt.open(cfg.libvirt_uri(h))
            with contextlib.suppress(libvirt.libvirtError):
                c.lookupByName(name).destroy()
            c.close()
