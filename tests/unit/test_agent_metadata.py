"""ocf:kvmha:Guest meta-data: OCF 1.1 schema, every parameter, cheap and side-effect free."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmha.agents import guest_params
from kvmha.agents.metadata import metadata_xml

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "agents" / "Guest"
RNG = Path(__file__).parent / "data" / "ocf-ra-api-1.1.rng"
PY = "/usr/bin/python3"


def meta_data_subprocess(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, str(LAUNCHER), "meta-data"],
        capture_output=True,
        text=True,
        env=env if env is not None else {"PATH": "/usr/bin:/bin"},
        check=False,
        timeout=30,
    )


@pytest.mark.skipif(shutil.which("xmllint") is None, reason="xmllint (libxml2-utils) missing")
def test_metadata_validates_against_ocf_1_1_rng(tmp_path: Path) -> None:
    res = meta_data_subprocess()
    assert res.returncode == 0, res.stderr
    out = tmp_path / "md.xml"
    out.write_text(res.stdout)
    chk = subprocess.run(
        ["xmllint", "--noout", "--relaxng", str(RNG), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert chk.returncode == 0, chk.stderr


def test_every_parameter_in_metadata() -> None:
    root = ET.fromstring(metadata_xml())
    assert root.findtext("version") == "1.1"
    names = [p.get("name") for p in root.iter("parameter")]
    assert names == [p.name for p in guest_params.PARAMS]
    for p in root.iter("parameter"):
        assert p.find("longdesc") is not None and (p.findtext("longdesc") or "").strip()
        assert (p.findtext("shortdesc") or "").strip()
        assert p.find("content") is not None
        assert p.get("reloadable") in ("0", "1")
    cfg = root.find("parameters/parameter[@name='config']")
    assert cfg is not None
    assert cfg.get("unique-group") == "config" and cfg.get("required") == "1"


def test_virtualdomain_parameter_names_kept() -> None:
    vd_names = {
        "config",
        "hypervisor",
        "force_stop",
        "migration_transport",
        "migration_user",
        "migration_network_suffix",
        "migrateuri",
        "migrateport",
        "migrate_options",
        "migration_speed",
        "migration_downtime",
        "remoteuri",
        "monitor_scripts",
        "autoset_utilization_cpu",
        "autoset_utilization_hv_memory",
        "save_config_on_stop",
        "snapshot",
        "start_resources",
        "shutdown_mode",
    }
    assert vd_names <= set(guest_params.BY_NAME)


def test_reloadable_and_deprecated() -> None:
    root = ET.fromstring(metadata_xml())
    reloadable = {p.get("name") for p in root.iter("parameter") if p.get("reloadable") == "1"}
    assert {
        "shutdown_timeout",
        "migration_speed",
        "migration_downtime",
        "health_tcp",
        "health_http",
        "health_timeout",
        "force_stop",
    } <= reloadable
    assert "config" not in reloadable and "hypervisor" not in reloadable
    dep = root.find("parameters/parameter[@name='sync_config_on_stop']/deprecated")
    assert dep is not None
    rw = dep.find("replaced-with")
    assert rw is not None and rw.get("name") == "save_config_on_stop"


def test_actions_and_monitor_depths() -> None:
    root = ET.fromstring(metadata_xml())
    actions = root.findall("actions/action")
    names = {a.get("name") for a in actions}
    assert {
        "start",
        "stop",
        "monitor",
        "status",
        "migrate_to",
        "migrate_from",
        "reload-agent",
        "meta-data",
        "validate-all",
    } <= names
    monitors = [a for a in actions if a.get("name") == "monitor"]
    assert sorted(a.get("depth") for a in monitors) == ["0", "10"]
    assert len({a.get("interval") for a in monitors}) == 2  # Pacemaker needs distinct ones
    assert all(a.get("timeout") for a in actions)


def test_meta_data_does_not_import_libvirt_nor_write(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom kvmha.agents.guest import main\nrc = main(['Guest', 'meta-data'])\n"
        "assert 'libvirt' not in sys.modules, 'libvirt imported'\n"
        "assert 'xml.etree.ElementTree' not in sys.modules\nsys.exit(rc)\n"
    )
    rsc = tmp_path / "rsc"
    env = {"PATH": "/usr/bin:/bin", "HA_RSCTMP": str(rsc), "OCF_RESKEY_config": "/nonexistent"}
    res = subprocess.run(
        [PY, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=tmp_path,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert "<resource-agent" in res.stdout
    assert not rsc.exists()
    assert list(tmp_path.iterdir()) == [rsc] or list(tmp_path.iterdir()) == []


INSTALLED_LAUNCHER = Path("/usr/lib/ocf/resource.d/kvmha/Guest")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to hacluster")
def test_meta_data_as_hacluster() -> None:
    """pacemaker-controld runs meta-data as hacluster: through the installed launcher and
    package, never the checkout (hacluster may not read it: a clone in root's 0700 home)."""
    import pwd

    pwd.getpwnam("hacluster")  # Pacemaker is installed: a missing user is a failure
    runuser = shutil.which("runuser")
    assert runuser, "runuser (util-linux) is missing"
    assert INSTALLED_LAUNCHER.read_bytes() == LAUNCHER.read_bytes(), "run scripts/setup.sh"
    res = subprocess.run(
        [runuser, "-u", "hacluster", "--", PY, str(INSTALLED_LAUNCHER), "meta-data"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
    )
    assert res.returncode == 0, res.stderr
    ET.fromstring(res.stdout)
    assert sys.version_info >= (3, 9)
