"""make rpm builds the SRPM and the noarch RPMs (kvmha, fence-agents-kvmha, kvmha-lab,
cockpit-kvmha), running the unit tests in %check; rpmlint finds no errors and every filter
is used; the RPMs install into a scratch root with every path and mode right, the lab is
in its own subpackage and the production package runs without it."""

from __future__ import annotations

import os
import re
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
    "/usr/lib/firewalld/services/kvmha-fence-listener.xml": ("f", 0o644, "kvmha"),
    "/usr/lib/firewalld/services/kvmha-migration.xml": ("f", 0o644, "kvmha"),
    "/usr/sbin/fence_kvmhalab": ("f", 0o755, "kvmha-lab"),
    "/usr/share/cockpit/kvmha": ("d", 0o755, "cockpit-kvmha"),
}
SUBPACKAGES = {"kvmha", "fence-agents-kvmha", "kvmha-lab", "cockpit-kvmha"}
BUILD_LOG: list[str] = []


def sh(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def rpms() -> dict[str, Path]:
    r = sh("make", "rpm", cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    BUILD_LOG.append(r.stdout + r.stderr)
    found = {p.name: p for p in DIST.glob("*.rpm")}
    assert set(found) == {"kvmha-0.1.0-1.src.rpm"} | {
        f"{n}-0.1.0-1.noarch.rpm" for n in SUBPACKAGES
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


def test_every_rpmlint_filter_is_used(rpms: dict[str, Path]) -> None:
    r = sh("rpmlint", *map(str, rpms.values()))  # without the project's filters
    reported = [x for x in r.stdout.splitlines() if ": E: " in x or ": W: " in x]
    rc = (REPO / "packaging/rpm/kvmha.rpmlintrc").read_text().splitlines()
    filters = [x.split('"')[1] for x in rc if x.startswith("addFilter(")]
    assert filters
    for f in filters:
        assert any(re.search(f, line) for line in reported), f"unused filter {f!r}"
    for j, line in enumerate(rc):  # every filter (or group of filters) has its reason above
        if line.startswith("addFilter("):
            k = j - 1
            while rc[k].startswith("addFilter("):
                k -= 1
            assert rc[k].startswith("#"), f"no reason above {line}"


def test_check_ran_the_unit_tests(rpms: dict[str, Path]) -> None:
    log = BUILD_LOG[0]
    assert "Executing(%check)" in log
    assert re.search(r"\n\d+ passed in ", log), log[-2000:]


def test_runtime_requires(rpms: dict[str, Path]) -> None:
    reqs = sh("rpm", "-qpR", str(rpms["kvmha-0.1.0-1.noarch.rpm"])).stdout.split()
    for name in (
        "python3-libvirt",
        "python3-pyroute2",
        "python3-dbus",
        "python3-click",
        "pcs",
        "pacemaker",
        "pacemaker-cli",
        "libvirt-daemon-driver-qemu",
        "firewalld-filesystem",
    ):
        assert name in reqs, name
    spec = (REPO / "packaging/rpm/kvmha.spec").read_text()
    for macro in ("%pyproject_buildrequires", "%pyproject_wheel", "%pyproject_install"):
        assert macro in spec
    assert "%pyproject_save_files kvmha" in spec and "-f %{pyproject_files}" in spec
    for m in ("systemd_post", "systemd_preun", "systemd_postun_with_restart"):
        assert f"%{m} kvmha-fence-listener.service" in spec


def test_lab_is_only_in_kvmha_lab(root: Path, rpms: dict[str, Path]) -> None:
    main = sh("rpm", "-qpl", str(rpms["kvmha-0.1.0-1.noarch.rpm"])).stdout.splitlines()
    lab = sh("rpm", "-qpl", str(rpms["kvmha-lab-0.1.0-1.noarch.rpm"])).stdout.splitlines()
    assert not [f for f in main if "/kvmha/tools/lab" in f]
    assert any(f.endswith("/kvmha/tools/lab/lab.py") for f in lab)
    assert any(f.endswith("/kvmha/tools/lab/install.md") for f in lab)  # the guide it runs
    guide = next(root.glob("usr/lib/python3*/site-packages/kvmha/tools/lab/install.md"))
    assert not guide.is_symlink() and guide.read_text() == (REPO / "docs/install.md").read_text()
    cockpit = sh("rpm", "-qpl", str(rpms["cockpit-kvmha-0.1.0-1.noarch.rpm"])).stdout.split()
    for f in (
        sorted((REPO / "tools/cockpit").glob("*")) if (REPO / "tools/cockpit").is_dir() else []
    ):
        assert f"/usr/share/cockpit/kvmha/{f.name}" in cockpit, f.name


def test_production_package_runs_without_the_lab(
    rpms: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """kvmha and fence-agents-kvmha alone (no kvmha-lab): the CLI and the listener load."""
    d = tmp_path_factory.mktemp("rpmroot-prod")
    binaries = [str(rpms[f"{n}-0.1.0-1.noarch.rpm"]) for n in ("kvmha", "fence-agents-kvmha")]
    r = sh("rpm", "--root", str(d), "--nodeps", "--noscripts", "-i", *binaries)
    assert r.returncode == 0, r.stderr
    env = {"PATH": "/usr/sbin:/usr/bin", "PYTHONPATH": str(site_packages(d))}
    for argv in (
        ["-c", "import kvmha.tools.cli"],
        ["-m", "kvmha.tools.cli", "--help"],
        ["-m", "kvmha.tools.cli", "fence", "--help"],
        ["-c", "import kvmha.fence.listener"],
    ):
        r = sh("/usr/bin/python3", *argv, env=env, cwd="/")
        assert r.returncode == 0, (argv, r.stderr[-1500:])


def test_listener_unit_as_installed(root: Path) -> None:
    unit = (root / "usr/lib/systemd/system/kvmha-fence-listener.service").read_text()
    assert "Type=notify" in unit and "virtqemud.service" in unit
    r = sh("systemd-analyze", "security", "--offline=true", "--no-pager",
           str(root / "usr/lib/systemd/system/kvmha-fence-listener.service"))  # fmt: skip
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m and float(m.group(1)) <= 4.0, r.stdout[-1500:]
    for name in ("kvmha-fence-listener.xml", "kvmha-migration.xml"):
        ET.parse(root / "usr/lib/firewalld/services" / name)


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
