"""``kvmha doctor`` inside a real lab host: a healthy host, then one broken three ways.

The lab has no systemd (every host's PID 1 is the lab's init), so doctor reads services
from the host's own /proc (its PID namespace) and says so. The broken host: stonith
disabled (cluster-wide), a key file 0644 in the host's private /etc/kvmha, the fence
listener configured but not running, and libvirtd stopped by SIGSTOP for one doctor run
(a few seconds, far below the guests' 30 s monitor timeout). Everything is restored.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvmha.tools.lab.lab import Lab

pytestmark = pytest.mark.lab

DOCTOR = ["/usr/bin/python3", "-I", "-m", "kvmha.tools.doctor_cli"]
# what a healthy lab host may warn about: no systemd, no time sync, no listener set up
LAB_WARNINGS = {"systemd-absent", "timesync-missing", "kvmha-fence-listener-unconfigured"}


def doctor(lab: Lab, host: str, *args: str) -> tuple[int, dict[str, Any]]:
    r = lab.run_in(host, [*DOCTOR, "--json", *args], timeout=90, check=False)
    assert r.returncode in (0, 1, 2), f"doctor failed (exit {r.returncode}): {r.stderr}"
    doc = json.loads(r.stdout)
    return r.returncode, doc


def by_code(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {f["code"]: f for f in doc["findings"]}


def online_host(lab: Lab) -> str:
    """A powered host (another test may have cut the power of one)."""
    for host in lab.cfg.host_names():
        if lab.powered(host):
            return host
    raise AssertionError("no lab host is powered")


def test_doctor_on_a_healthy_host(lab3: Lab) -> None:
    host = online_host(lab3)
    rc, doc = doctor(lab3, host)
    assert doc["host"] == host
    assert doc["services_from"] == "processes"
    errors = [f for f in doc["findings"] if f["severity"] == "error"]
    assert not errors, errors
    warnings = {f["code"] for f in doc["findings"] if f["severity"] == "warning"}
    assert warnings <= LAB_WARNINGS, warnings
    assert rc == (1 if warnings else 0)
    ok = {f["code"] for f in doc["findings"] if f["severity"] == "ok"}
    assert {"libvirt", "corosync", "pacemaker", "stonith", "quorum", "key-modes"} <= ok
    assert {"lock-manager", "virtlockd"} <= ok  # the lab's hosts take disk leases
    assert "lockspace" in by_code(doc)["lock-manager"]["message"]
    assert any(c.startswith("net-") for c in ok)
    f = by_code(doc)
    assert "answers" in f["libvirt"]["message"]
    assert "lab-power" in f["stonith"]["message"]
    # the table, as piped: plain text
    r = lab3.run_in(host, DOCTOR, timeout=90, check=False)
    assert r.returncode == rc
    assert "\x1b[" not in r.stdout and "CHECK" in r.stdout


def test_doctor_on_a_broken_host(lab3: Lab) -> None:
    host = online_host(lab3)

    def sh(script: str, check: bool = True) -> str:
        return lab3.run_in(host, ["sh", "-c", script], timeout=60, check=check).stdout.strip()

    stonith_before = sh(
        "crm_attribute --type crm_config --name stonith-enabled --query --quiet", check=False
    )
    listener_existed = sh("test -e /etc/kvmha/fence/listener.conf && echo yes", check=False)
    fence_dir_existed = sh("test -d /etc/kvmha/fence && echo yes", check=False)
    libvirtd = int(sh("cat /run/libvirt/libvirtd.pid"))
    paused = False
    try:
        sh("pcs property set stonith-enabled=false")
        sh("umask 022; printf 'name=doctor-test\\nsecret=00\\n' > /etc/kvmha/doctor-test.key")
        sh("chmod 0644 /etc/kvmha/doctor-test.key")
        if not listener_existed:
            # configured (config and the hosts' key) but not running: a stopped service
            sh(
                "install -d -m 0750 /etc/kvmha/fence && umask 077 && "
                f"printf '[listener]\\nhost = {host}\\n' > /etc/kvmha/fence/listener.conf && "
                "printf 'name=@hosts\\nsecret=00\\n' > /etc/kvmha/fence/hosts.key"
            )
        sh(f"kill -STOP {libvirtd}")
        paused = True
        rc, doc = doctor(lab3, host, "--timeout", "3")
        sh(f"kill -CONT {libvirtd}")
        paused = False
    finally:
        if paused:
            sh(f"kill -CONT {libvirtd}", check=False)
        value = stonith_before or "true"
        sh(f"pcs property set stonith-enabled={value}", check=False)
        sh("rm -f /etc/kvmha/doctor-test.key", check=False)
        if not listener_existed:
            sh("rm -f /etc/kvmha/fence/listener.conf /etc/kvmha/fence/hosts.key", check=False)
            if not fence_dir_existed:
                sh("rmdir /etc/kvmha/fence", check=False)

    assert rc == 2
    f = by_code(doc)
    errors = {c for c, x in f.items() if x["severity"] == "error"}
    expected = {"stonith-disabled", "key-mode", "libvirt-timeout"}
    if not listener_existed:
        expected.add("kvmha-fence-listener-stopped")
    assert expected <= errors, doc["findings"]
    assert f["stonith-disabled"]["fix"] == "pcs property set stonith-enabled=true"
    assert f["key-mode"]["message"].startswith("key file /etc/kvmha/doctor-test.key has mode 0644")
    assert f["key-mode"]["fix"] == "chmod 0600 /etc/kvmha/doctor-test.key"
    assert "restart" in f["libvirt-timeout"]["fix"]
    if not listener_existed:
        assert f["kvmha-fence-listener-stopped"]["fix"].startswith(
            "systemctl start kvmha-fence-listener"
        )
    assert all(x["fix"] for x in doc["findings"] if x["severity"] != "ok")
    assert doc["summary"]["error"] == len(errors)

    # all restored: the host is healthy again
    rc, doc = doctor(lab3, host)
    assert not [x for x in doc["findings"] if x["severity"] == "error"], doc["findings"]
