"""'kvmha lab down' leaves nothing behind: after a full up, a partial up, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kvmha.process import module_argv, pid_alive
from kvmha.tools.lab import network, power
from kvmha.tools.lab.config import LabConfig
from kvmha.tools.lab.lab import Lab

from .helpers import kvmha, wait_for

pytestmark = pytest.mark.lab
LABDIR = Path("/var/lib/kvmha-test/labdown")


def lab_processes(cfg: LabConfig) -> set[int]:
    """Every process of the lab: in its namespaces, plus the power switch."""
    pids: set[int] = set()
    for ns in network.lab_netns(cfg):
        pids.update(p for p in power.netns_pids(ns) if pid_alive(p))
    try:
        pdu = int((cfg.run_dir / "power.pid").read_text())
        if pid_alive(pdu):
            pids.add(pdu)
    except (FileNotFoundError, ValueError):
        pass
    return pids


def assert_nothing_left(cfg: LabConfig, seen: set[int]) -> None:
    alive = sorted(p for p in seen if pid_alive(p))
    assert not alive, f"lab processes still alive: {alive}"
    assert network.lab_netns(cfg) == []
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not any(name.startswith(cfg.tag) for name in netns), netns
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    assert str(cfg.labdir) not in mounts
    assert cfg.tag not in mounts


@pytest.fixture()
def fresh() -> Lab:
    Lab(LABDIR).down(purge=True)
    return Lab(LABDIR)


def test_down_after_full_up_and_kill_9(fresh: Lab) -> None:
    fresh.up(1, 1)
    cfg = fresh.cfg
    seen = lab_processes(cfg)
    assert len(seen) > 8  # init, daemons, QEMU, power switch
    # kill -9 of libvirtd inside host1 (found by PID, through its pid file)
    libvirtd = fresh.run_in("host1", ["cat", "/run/libvirt/libvirtd.pid"]).stdout.strip()
    fresh.run_in("host1", ["kill", "-9", libvirtd])
    r = kvmha("lab", "down", "--labdir", str(LABDIR))
    assert r.returncode == 0, r.stderr
    assert_nothing_left(cfg, seen)
    assert not (LABDIR / "lab.json").exists()


def test_down_after_interrupted_up(fresh: Lab) -> None:
    proc = subprocess.Popen(
        module_argv(
            "kvmha.tools.cli", "lab", "up", "--hosts", "2", "--guests", "0", "--labdir", str(LABDIR)
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cfg = wait_for("the lab to exist", lambda: LabConfig.load(LABDIR), 60)
    wait_for("a host to boot", lambda: power.is_on(cfg, "host1"), 60, 0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    seen = lab_processes(cfg)
    assert seen
    r = kvmha("lab", "down", "--labdir", str(LABDIR))
    assert r.returncode == 0, r.stderr
    assert_nothing_left(cfg, seen)


def test_down_when_nothing_is_up(fresh: Lab) -> None:
    r = kvmha("lab", "down", "--labdir", str(LABDIR))
    assert r.returncode == 0
    assert "nothing to do" in r.stderr
    r = kvmha("lab", "status", "--labdir", str(LABDIR))
    assert r.returncode == 1
    assert r.stderr.startswith("kvmha: error: no lab in")
