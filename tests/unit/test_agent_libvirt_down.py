"""Probes and stops while libvirtd is down or hung (VirtualDomain bug #546): decide from the
QEMU process, never hang, fail inside the operation timeout with a reason."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "agents" / "Guest"
PY = "/usr/bin/python3"


@pytest.fixture()
def name() -> str:
    return f"kvmha-unit-down-{os.getpid()}"


@pytest.fixture()
def config(tmp_path: Path, name: str) -> Path:
    p = tmp_path / "vm.xml"
    p.write_text(
        f"<domain type='qemu'><name>{name}</name><memory>65536</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    return p


@pytest.fixture()
def fake_qemu(name: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line looks like libvirt's QEMU for the guest."""
    proc = subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-c",
            "import time; time.sleep(120)",
            "-name",
            f"guest={name},debug-threads=on",
        ],
        executable=PY,
    )
    time.sleep(0.1)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture()
def hung_socket(tmp_path: Path) -> Iterator[str]:
    """A 'libvirtd' that accepts connections and never answers."""
    path = str(tmp_path / "hung-sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(8)
    yield path
    srv.close()


def run(
    action: str,
    config: Path,
    tmp_path: Path,
    socket_path: str,
    timeout_ms: int,
    interval_ms: int = 0,
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HA_RSCTMP": str(tmp_path / "rsc"),
        "HA_LOGFACILITY": "none",
        "OCF_RESOURCE_INSTANCE": "vm",
        "OCF_RESKEY_config": str(config),
        "OCF_RESKEY_hypervisor": f"qemu:///system?socket={socket_path}",
        "OCF_RESKEY_CRM_meta_timeout": str(timeout_ms),
        "OCF_RESKEY_CRM_meta_interval": str(interval_ms),
    }
    t0 = time.monotonic()
    res = subprocess.run(
        [PY, str(LAUNCHER), action],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=timeout_ms / 1000 + 10,
    )
    return res, time.monotonic() - t0


def test_probe_libvirtd_down_no_process(config: Path, tmp_path: Path) -> None:
    res, _ = run("monitor", config, tmp_path, str(tmp_path / "none"), 20000)
    assert res.returncode == 7, res.stderr


def test_probe_libvirtd_down_qemu_running(
    config: Path, tmp_path: Path, fake_qemu: subprocess.Popen[bytes]
) -> None:
    res, _ = run("monitor", config, tmp_path, str(tmp_path / "none"), 20000)
    assert res.returncode == 0, res.stderr
    res, _ = run("monitor", config, tmp_path, str(tmp_path / "none"), 20000, 10000)
    assert res.returncode == 0, res.stderr


def test_stop_libvirtd_down(
    config: Path, tmp_path: Path, name: str, fake_qemu: subprocess.Popen[bytes]
) -> None:
    res, _ = run("stop", config, tmp_path, str(tmp_path / "none"), 4000)
    assert res.returncode == 1
    assert f"cannot stop {name}" in res.stderr and str(fake_qemu.pid) in res.stderr
    fake_qemu.kill()
    fake_qemu.wait()
    res, _ = run("stop", config, tmp_path, str(tmp_path / "none"), 4000)
    assert res.returncode == 0, res.stderr


def test_hung_libvirtd_probe_and_stop(
    config: Path, tmp_path: Path, hung_socket: str, fake_qemu: subprocess.Popen[bytes]
) -> None:
    res, _ = run("monitor", config, tmp_path, hung_socket, 3000)
    assert res.returncode == 0, res.stderr  # its QEMU runs
    res, _ = run("stop", config, tmp_path, hung_socket, 3000)
    assert res.returncode == 1
    assert "still runs" in res.stderr and "ocf-exit-reason:" in res.stderr
    fake_qemu.kill()
    fake_qemu.wait()
    res, _ = run("monitor", config, tmp_path, hung_socket, 3000)
    assert res.returncode == 7
    res, _ = run("stop", config, tmp_path, hung_socket, 3000)
    assert res.returncode == 0, res.stderr


def test_hung_libvirtd_start_fails_in_time(config: Path, tmp_path: Path, hung_socket: str) -> None:
    res, _ = run("start", config, tmp_path, hung_socket, 3000)
    assert res.returncode == 1
    assert "timed out while connecting" in res.stderr
