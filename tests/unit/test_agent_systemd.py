"""The systemd drop-in kvmha ships for ocf:kvmha:Guest: Pacemaker stops before libvirt,
libvirt-guests and libvirt's machine scopes at host shutdown (resource-agents #1087)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DROPIN = (
    Path(__file__).resolve().parents[2]
    / "packaging/systemd/resource-agents-deps.target.d/kvmha-guest.conf"
)


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for line in DROPIN.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _eq, value = line.partition("=")
        out.setdefault(f"{section}{key}", []).extend(value.split())
    return out


def test_dropin_orders_pacemaker_before_libvirt_at_shutdown() -> None:
    d = directives()
    after = set(d["[Unit]After"])
    # stop order is the reverse of start order: everything pacemaker must outlive
    for unit in (
        "libvirtd.service",
        "virtqemud.service",
        "libvirt-guests.service",
        "virt-guest-shutdown.target",
        "virtlockd.service",
    ):
        assert unit in after, unit
    assert d["[Unit]Wants"] == ["virt-guest-shutdown.target"]
    assert set(d) == {"[Unit]After", "[Unit]Wants"}  # ordering only: never Requires=


def test_pacemaker_unit_is_ordered_after_resource_agents_deps() -> None:
    """The drop-in works through pacemaker.service's own After=resource-agents-deps.target."""
    unit = next(
        (
            p
            for p in (
                Path("/usr/lib/systemd/system/pacemaker.service"),
                Path("/lib/systemd/system/pacemaker.service"),
            )
            if p.exists()
        ),
        None,
    )
    assert unit is not None, "pacemaker.service is not installed"
    after = [
        word
        for line in unit.read_text().splitlines()
        if line.strip().startswith("After=")
        for word in line.split("=", 1)[1].split()
    ]
    assert "resource-agents-deps.target" in after


def test_dropin_is_valid_for_systemd(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    assert exe is not None, "systemd-analyze is missing"
    unit = tmp_path / "resource-agents-deps.target"
    unit.write_text("[Unit]\nDescription=test\n")
    d = tmp_path / "resource-agents-deps.target.d"
    d.mkdir()
    (d / "kvmha-guest.conf").write_text(DROPIN.read_text())
    res = subprocess.run(
        [exe, "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )
    bad = [ln for ln in res.stderr.splitlines() if "kvmha-guest.conf" in ln]
    assert bad == [], res.stderr
