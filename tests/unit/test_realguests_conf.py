"""Real lab guests: configuration that needs no lab (identity, seed, cluster XML, leases)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from unittest import mock

import pytest

from kvmha.errors import UsageError
from kvmha.tools.lab import clusterconf, debimage, libvirtconf, realcluster
from kvmha.tools.lab.config import GUEST_CLUSTER_TOKEN_MS, LabConfig


def cfg(tmp_path: Path, image: str = "debian", cluster: bool = True, guests: int = 3) -> LabConfig:
    return LabConfig(tmp_path / "lab", 3, guests, guest_image=image, guest_cluster=cluster)


def test_guest_cluster_needs_real_guests(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        LabConfig(tmp_path, 3, 3, guest_cluster=True)  # busybox
    with pytest.raises(UsageError):
        LabConfig(tmp_path, 3, 1, guest_image="debian", guest_cluster=True)
    with pytest.raises(UsageError):
        LabConfig(tmp_path, 3, 3, guest_image="windows")


def test_config_round_trip(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    c.save()
    back = LabConfig.load(c.labdir)
    assert back == c
    assert back is not None and back.real_guests and not back.remote_nodes


def test_each_guest_its_own_identity_on_the_command_line_and_disks(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    seen = set()
    for g in c.guest_names():
        root = ET.fromstring(libvirtconf.debian_domain_xml(c, g, "/k", "/i"))
        cmdline = root.findtext("os/cmdline") or ""
        assert f"systemd.hostname={g}" in cmdline
        assert f"kvmha.ip={c.guest_address(g)}/24" in cmdline
        mid = cmdline.split("systemd.machine_id=")[1].split()[0]
        assert len(mid) == 32 and int(mid, 16) >= 0
        seen.add(mid)
        disks = root.findall("devices/disk")
        assert [d.find("source").get("file") for d in disks] == [  # type: ignore[union-attr]
            str(c.guest_disk(g)),
            str(c.guest_seed(g)),
        ]
        assert disks[1].find("readonly") is not None
        # on the shared storage (the lab directory), so the guest can live-migrate
        assert all(c.labdir in Path(d.find("source").get("file")).parents for d in disks)  # type: ignore[union-attr, arg-type]
    assert len(seen) == 3


def test_seed_of_a_guest_cluster_member(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    with mock.patch.object(realcluster, "write_private") as wp:
        seeds = realcluster.seed_files(c)
    # the hosts' half of the fence key, scoped to exactly the members, on every host
    assert wp.call_count == 3
    for call in wp.call_args_list:
        path, text = call.args
        assert path.name == "gcluster.key" and "guest1,guest2,guest3" in text.replace(" ", ",")
    keys = set()
    for g in c.guest_names():
        files, units = seeds[g]
        assert units == ["corosync.service", "pacemaker.service"]
        assert files["/etc/corosync/authkey"][1] == 0o400
        assert files[realcluster.GUEST_KEY_PATH][1] == 0o600
        keys.add(files[realcluster.GUEST_KEY_PATH][0])
        conf = files["/etc/corosync/corosync.conf"][0].decode()
        assert f"token: {GUEST_CLUSTER_TOKEN_MS}" in conf
        for other in c.guest_names():
            assert f"name: {other}\n        nodeid: {c.guest_nodeid(other)}" in conf
    assert len(keys) == 1  # one key for the guest cluster


def test_seed_without_a_cluster_starts_nginx_and_remote_starts_pacemaker_remote(
    tmp_path: Path,
) -> None:
    plain = realcluster.seed_files(cfg(tmp_path, cluster=False))
    assert all(units == ["nginx.service"] for _, units in plain.values())
    c = cfg(tmp_path, image="debian-remote", cluster=False, guests=1)
    c.labdir.mkdir(parents=True)
    files, units = realcluster.seed_files(c)["guest1"]
    assert units == ["pacemaker_remote.service"]
    assert files["/etc/pacemaker/authkey"] == (realcluster.remote_key(c), 0o400)


def test_guest_cluster_resources(tmp_path: Path) -> None:
    root = ET.fromstring(realcluster.resources_xml(cfg(tmp_path)))
    dev = root.find("primitive[@id='fence-kvmha']")
    assert dev is not None and dev.get("class") == "stonith" and dev.get("type") == "fence_kvmha"
    attrs = {n.get("name"): n.get("value") for n in dev.iter("nvpair")}
    assert attrs["ip"] == "10.77.0.11,10.77.0.12,10.77.0.13"
    assert attrs["pcmk_host_list"] == "guest1 guest2 guest3"
    group = root.find("group[@id='web']")
    assert group is not None
    assert [p.get("id") for p in group.iter("primitive")] == ["vip", "nginx"]


def test_members_prefer_different_hosts_but_may_share(tmp_path: Path) -> None:
    cons = ET.fromstring(clusterconf.constraints_xml(cfg(tmp_path)))
    scores = {c.get("score") for c in cons.iter("rsc_colocation")}
    assert scores == {"-50"} and len(list(cons.iter("rsc_colocation"))) == 3
    # below the lab's resource-stickiness: moving one member moves only that one
    assert -int(next(iter(scores))) < 100


def test_remote_guest_node_meta_and_service_placement(tmp_path: Path) -> None:
    c = cfg(tmp_path, image="debian-remote", cluster=False, guests=2)
    res = ET.fromstring(clusterconf.resources_xml(c))
    meta = {
        n.get("name"): n.get("value")
        for n in res.find("primitive[@id='guest1']/meta_attributes").iter("nvpair")
    }  # type: ignore[union-attr]
    assert meta["remote-node"] == "guest1-node" != "guest1"  # not the resource ID
    assert res.find("primitive[@id='web-guest1']") is not None
    cons = ET.fromstring(clusterconf.constraints_xml(c))
    never_hosts = cons.find("rsc_location[@id='web-guest1-not-hosts']")
    assert never_hosts is not None and never_hosts.get("resource-discovery") == "never"
    # a guest node's #kind is "container": the ban names the cluster nodes only
    (expr,) = never_hosts.iter("expression")
    assert (expr.get("attribute"), expr.get("operation"), expr.get("value")) == (
        "#kind",
        "eq",
        "cluster",
    )
    assert cons.find("rsc_location[@id='web-guest1-in-guest1']").get("node") == "guest1-node"  # type: ignore[union-attr]


def test_lab_hosts_take_disk_leases_on_the_shared_storage(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    assert 'lock_manager = "lockd"' in libvirtconf.qemu_conf(c, "host1")
    lockd = libvirtconf.qemu_lockd_conf(c)
    assert "auto_disk_leases = 1" in lockd and "require_lease_for_disks = 1" in lockd
    assert f'file_lockspace_dir = "{c.labdir / "locks"}"' in lockd


def test_image_recipe_digest_follows_the_fence_agent_and_packages() -> None:
    base = debimage._image_digest("r1")
    assert debimage._image_digest("r2") != base
    with mock.patch.object(debimage, "_fence_agent_script", return_value=b"changed"):
        assert debimage._image_digest("r1") != base
    assert debimage._rootfs_digest("full", "k1") != debimage._rootfs_digest("remote", "k1")
    assert debimage._rootfs_digest("full", "k1") != debimage._rootfs_digest("full", "k2")
    assert "pacemaker" in debimage.packages("full")
    assert "pacemaker" not in debimage.packages("remote")
    assert "pacemaker-remote" in debimage.packages("remote")
    # systemd: resources need the system bus; pacemaker-remote does not pull dbus in
    assert "dbus" in debimage.packages("remote") and "dbus" in debimage.packages("full")
    assert "pcs" not in debimage.packages("full")  # pcsd is heavy under TCG


def test_fence_kvmha_in_the_image_is_the_stdlib_only_agent() -> None:
    script = debimage._fence_agent_script().decode()
    assert script.startswith("#!/usr/bin/python3\n")
    imports = [
        line.split()[1].split(".")[0]
        for line in script.splitlines()
        if line.startswith(("import ", "from "))
    ]
    assert "kvmha" not in imports and "libvirt" not in imports
