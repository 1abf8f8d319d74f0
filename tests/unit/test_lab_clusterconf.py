"""The lab's generated configuration is accepted by the real tools (no daemons needed)."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from kvmha.tools.lab import clusterconf, libvirtconf
from kvmha.tools.lab.config import LabConfig


@pytest.fixture()
def cfg() -> LabConfig:
    return LabConfig(Path("/var/lib/kvmha-lab"), 3, 2, "VirtualDomain", 1000)


def test_corosync_conf(cfg: LabConfig) -> None:
    # (corosync -t needs one of the node addresses on this machine: the lab itself proves
    # the file in the integration tests)
    text = clusterconf.corosync_conf(cfg)
    assert text.count("node {") == 3
    for h in cfg.host_names():
        assert f"name: {h}" in text
        assert f"ring0_addr: {cfg.host_address(h)}" in text
        assert f"nodeid: {cfg.host_index(h)}" in text
    assert "token: 1000" in text and "crypto_cipher: aes256" in text
    assert text.count("{") == text.count("}")


def full_cib(cfg: LabConfig) -> str:
    empty = subprocess.run(
        ["cibadmin", "--empty"], capture_output=True, text=True, check=True
    ).stdout
    root = ET.fromstring(clusterconf.seed_cib(empty))
    conf = root.find("configuration")
    assert conf is not None
    nodes = conf.find("nodes")
    assert nodes is not None
    for h in cfg.host_names():
        ET.SubElement(nodes, "node", id=str(cfg.host_index(h)), uname=h)
    resources = conf.find("resources")
    assert resources is not None
    conf.remove(resources)
    conf.insert(2, ET.fromstring(clusterconf.resources_xml(cfg)))
    # a quorate cluster with every host up: crm_verify judges the configuration only
    root.set("have-quorum", "1")
    status = root.find("status")
    assert status is not None
    for h in cfg.host_names():
        ET.SubElement(
            status,
            "node_state",
            id=str(cfg.host_index(h)),
            uname=h,
            in_ccm="true",
            crmd="online",
            join="member",
            expected="member",
        )
    return ET.tostring(root, encoding="unicode")


@pytest.mark.parametrize("agent", ["VirtualDomain", "Guest"])
def test_cib_with_resources_verifies(agent: str, tmp_path: Path) -> None:
    cfg = LabConfig(Path("/var/lib/kvmha-lab"), 3, 2, agent, 1000)
    f = tmp_path / "cib.xml"
    f.write_text(full_cib(cfg))
    r = subprocess.run(
        ["crm_verify", "-V", "-x", str(f)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = f.read_text()
    assert 'name="stonith-enabled" value="true"' in text
    assert 'name="dc-deadtime" value="2s"' in text
    assert 'name="pcmk_reboot_action" value="off"' in text
    prov = "kvmha" if agent == "Guest" else "heartbeat"
    assert text.count(f'provider="{prov}" type="{agent}"') == 2


def test_seed_cib_has_no_resources(cfg: LabConfig) -> None:
    empty = subprocess.run(
        ["cibadmin", "--empty"], capture_output=True, text=True, check=True
    ).stdout
    root = ET.fromstring(clusterconf.seed_cib(empty))
    assert root.find("configuration/resources") is not None
    assert list(root.find("configuration/resources")) == []  # type: ignore[arg-type]


def test_libvirt_config_files(cfg: LabConfig) -> None:
    conf = libvirtconf.libvirtd_conf(cfg, "host2")
    assert 'listen_addr = "10.77.0.12"' in conf
    assert f'host_uuid = "{cfg.host_uuid("host2")}"' in conf
    q = libvirtconf.qemu_conf(cfg, "host2")
    assert 'migration_host = "10.77.0.12"' in q


def test_guest_xml_validates_and_defines(cfg: LabConfig, tmp_path: Path) -> None:
    xml = libvirtconf.guest_domain_xml(cfg, "guest2", "/img/vmlinuz", "/img/initrd.img")
    f = tmp_path / "guest2.xml"
    f.write_text(xml)
    r = subprocess.run(
        ["virt-xml-validate", str(f), "domain"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(xml)
        assert dom.name() == "guest2"
        assert dom.UUIDString() == cfg.guest_uuid("guest2")
        assert "kvmha.ip=10.77.0.102/24" in xml
        assert cfg.guest_mac("guest2") in dom.XMLDesc(0)
    finally:
        conn.close()
