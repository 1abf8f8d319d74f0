"""make rpm builds the SRPM and both noarch RPMs; rpmlint finds no errors; the RPMs install
into a scratch root with every path and mode right, and what they install runs."""

from __future__ import annotations

import os
import stat
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / "dist" / "rpm"
RNG_OCF = REPO / "tests" / "unit" / "data" / "ocf-ra-api-1.1.rng"
RNG_FENCE = Path("/usr/share/cluster/relaxng/metadata.rng")

EXPECTED = {  # path -> (type, mode, package)
    "/usr/lib/ocf/resource.d/kvmha/Guest": ("f", 0o755, "kvmha"),
    "/usr/sbin/kvmha-fence-listener": ("f", 0o755, "kvmha"),
    "/usr/bin/kvmha": ("f", 0o755, "kvmha"),
    "/usr/lib/systemd/system/kvmha-fence-listener.service": ("f", 0o644, "kvmha"),
    "/etc/kvmha": ("d", 0o750, "kvmha"),
    "/etc/kvmha/fence": ("d", 0o750, "kvmha"),
    "/etc/kvmha/fence/keys": ("d", 0o700, "kvmha"),
    "/etc/kvmha/fence/listener.conf": ("f", 0o640, "kvmha"),
    "/etc/logrotate.d/kvmha": ("f", 0o644, "kvmha"),
    "/var/log/kvmha": ("d", 0o750, "kvmha"),
    "/var/lib/kvmha": ("d", 0o750, "kvmha"),
    "/usr/share/man/man1/kvmha.1": ("f", 0o644, "kvmha"),
    "/usr/share/bash-completion/completions/kvmha": ("f", 0o644, "kvmha"),
    "/usr/sbin/fence_kvmha": ("f", 0o755, "fence-agents-kvmha"),
    "/usr/share/man/man8/fence_kvmha.8": ("f", 0o644, "fence-agents-kvmha"),
}


def sh(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def rpms() -> dict[str, Path]:
    r = sh("make", "rpm", cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    found = {p.name: p for p in DIST.glob("*.rpm")}
    assert set(found) == {
        "kvmha-0.1.0-1.src.rpm",
        "kvmha-0.1.0-1.noarch.rpm",
        "fence-agents-kvmha-0.1.0-1.noarch.rpm",
    }, found
    return found


@pytest.fixture(scope="module")
def root(rpms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("rpmroot")
    binaries = [str(p) for n, p in rpms.items() if not n.endswith(".src.rpm")]
    r = sh("rpm", "--root", str(d), "--nodeps", "--noscripts", "-i", *binaries)
    assert r.returncode == 0, r.stderr
    yield d


def test_rpmlint_has_no_errors(rpms: dict[str, Path]) -> None:
    r = sh("rpmlint", "-r", str(REPO / "packaging/rpm/kvmha.rpmlintrc"), *map(str, rpms.values()))
    summary = r.stdout.strip().splitlines()[-1]
    assert " 0 errors" in summary, r.stdout


def test_paths_modes_and_owners(root: Path, rpms: dict[str, Path]) -> None:
    for path, (kind, mode, package) in EXPECTED.items():
        st = os.lstat(root / path.lstrip("/"))
        assert stat.S_ISDIR(st.st_mode) if kind == "d" else stat.S_ISREG(st.st_mode), path
        assert stat.S_IMODE(st.st_mode) == mode, f"{path}: {oct(stat.S_IMODE(st.st_mode))}"
        owner = sh("rpm", "--root", str(root), "-qf", path).stdout.strip()
        assert owner.startswith(package + "-0.1.0"), f"{path} owned by {owner}"
    config = sh("rpm", "--root", str(root), "-qc", "kvmha").stdout.split()
    assert "/etc/kvmha/fence/listener.conf" in config


def test_guest_package_needs_only_python(rpms: dict[str, Path]) -> None:
    reqs = sh("rpm", "-qpR", str(rpms["fence-agents-kvmha-0.1.0-1.noarch.rpm"])).stdout
    names = {line.split()[0] for line in reqs.splitlines() if not line.startswith("rpmlib(")}
    assert names <= {"python3", "/usr/bin/python3"}, names


def site_packages(root: Path) -> Path:
    found = list(root.glob("usr/lib/python3*/site-packages"))
    assert len(found) == 1, found
    return found[0]


def validate(xml: str, rng: Path, tmp: Path) -> None:
    ET.fromstring(xml)
    f = tmp / "meta.xml"
    f.write_text(xml)
    r = sh("xmllint", "--noout", "--relaxng", str(rng), str(f))
    assert r.returncode == 0, r.stderr


def test_installed_agents_print_valid_metadata(root: Path, tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/sbin:/usr/bin",
        "PYTHONPATH": str(site_packages(root)),
        "OCF_ROOT": "/usr/lib/ocf",
    }
    where = sh(
        "/usr/bin/python3",
        "-c",
        "import kvmha.agents.guest as g; print(g.__file__)",
        env=env,
        cwd="/",
    )
    assert where.stdout.startswith(str(root)), where.stdout + where.stderr
    guest = sh(
        "/usr/bin/python3",
        str(root / "usr/lib/ocf/resource.d/kvmha/Guest"),
        "meta-data",
        env=env,
        cwd="/",
    )
    assert guest.returncode == 0, guest.stderr
    validate(guest.stdout, RNG_OCF, tmp_path)
    # the guest-side agent runs with nothing of kvmha around it
    fence = sh(
        "/usr/bin/python3",
        "-I",
        str(root / "usr/sbin/fence_kvmha"),
        "-o",
        "metadata",
        env={"PATH": "/usr/bin"},
        cwd="/",
    )
    assert fence.returncode == 0, fence.stderr
    validate(fence.stdout, RNG_FENCE, tmp_path)
