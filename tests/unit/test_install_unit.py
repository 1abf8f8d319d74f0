"""The listener's systemd unit: systemd-analyze verify, the security score bound, the
ordering after libvirt's daemons, and Type=notify (the listener says READY=1 once it
listens)."""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

from .test_fence_fakes import start_lab, stop_lab

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "fence" / "kvmha-fence-listener.service"
MAX_EXPOSURE = 4.0


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_systemd_analyze_verify_passes() -> None:
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_security_exposure_is_ok() -> None:
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout[-2000:] + r.stderr[-2000:]
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout


def test_notify_type_ordering_and_commented_relaxations() -> None:
    text = UNIT.read_text()
    d = directives(text)
    assert d["Type"] == ["notify"]
    after = " ".join(d["After"]).split()
    assert {"virtqemud.service", "libvirtd.service", "pacemaker.service"} <= set(after)
    assert d["CapabilityBoundingSet"] == [""] and d["NoNewPrivileges"] == ["yes"]
    # every relaxation has its reason next to it
    for what in ("runs as root", "AF_INET", "PrivateNetwork", "PrivateUsers"):
        assert re.search(rf"# Relaxation: .*{re.escape(what)}", text, re.I), what
    assert "# without CAP_DAC_OVERRIDE" in text  # SupplementaryGroups=haclient


def test_listener_notifies_ready_once_it_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    lab = start_lab(tmp_path / "lab", hosts=("host1",))
    try:
        msg = sock.recv(200).decode()
        assert msg.startswith("READY=1\n") and "STATUS=listening on 127.0.0.1:" in msg
        port = int(msg.rsplit(":", 1)[1])
        assert port == lab.ports["host1"]
        socket.create_connection(("127.0.0.1", port), 2).close()  # it really listens
    finally:
        stop_lab(lab)
        sock.close()
