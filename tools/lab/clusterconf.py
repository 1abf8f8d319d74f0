"""Configuration files of the lab's host cluster: corosync.conf and the CIB."""

from __future__ import annotations

import os
import pwd
import xml.etree.ElementTree as ET
from pathlib import Path

from kvmha.tools.lab.config import AGENTS, LabConfig

FENCE_AGENT = "fence_kvmhalab"
FENCE_DEVICE_ID = "lab-power"


def corosync_conf(cfg: LabConfig) -> str:
    nodes = "".join(
        "    node {\n"
        f"        ring0_addr: {cfg.host_address(h)}\n"
        f"        name: {h}\n"
        f"        nodeid: {cfg.host_index(h)}\n"
        "    }\n"
        for h in cfg.host_names()
    )
    return (
        "# kvmha lab host cluster (written by 'kvmha lab up')\n"
        "totem {\n"
        "    version: 2\n"
        "    cluster_name: kvmhalab\n"
        "    transport: knet\n"
        f"    token: {cfg.token_ms}\n"
        "    crypto_cipher: aes256\n"
        "    crypto_hash: sha256\n"
        "}\n"
        f"nodelist {{\n{nodes}}}\n"
        "quorum {\n"
        "    provider: corosync_votequorum\n"
        "}\n"
        "logging {\n"
        "    to_logfile: yes\n"
        "    logfile: /var/log/corosync/corosync.log\n"
        "    to_syslog: no\n"
        "    to_stderr: no\n"
        "    timestamp: on\n"
        "}\n"
    )


def _nvset(parent: ET.Element, tag: str, set_id: str, values: dict[str, str]) -> ET.Element:
    nvs = ET.SubElement(parent, tag, id=set_id)
    for name, value in values.items():
        ET.SubElement(nvs, "nvpair", id=f"{set_id}-{name}", name=name, value=value)
    return nvs


CLUSTER_OPTIONS = {
    # The default 20 s costs 20 s at every cold start of a lab host.
    "dc-deadtime": "2s",
    "stonith-enabled": "true",
    "no-quorum-policy": "stop",
    "cluster-recheck-interval": "1min",
}


def seed_cib(empty_cib: str) -> str:
    """The CIB every host starts with: cluster options only, no resources yet.

    Fencing is on from the start, but the device is added once every host is online:
    a device present at first start would fence hosts that are still booting
    (startup-fencing), and a lab host that boots a second later is not a failure.
    """
    root = ET.fromstring(empty_cib)
    configuration = root.find("configuration")
    assert configuration is not None
    crm_config = configuration.find("crm_config")
    assert crm_config is not None
    _nvset(crm_config, "cluster_property_set", "lab-options", CLUSTER_OPTIONS)
    rsc_defaults = configuration.find("rsc_defaults")
    if rsc_defaults is None:
        rsc_defaults = ET.SubElement(configuration, "rsc_defaults")
    # Guests stay where they run when a host comes back: no needless migrations.
    _nvset(rsc_defaults, "meta_attributes", "lab-rsc-defaults", {"resource-stickiness": "100"})
    return ET.tostring(root, encoding="unicode")


def _op(
    ops: ET.Element,
    rid: str,
    name: str,
    timeout: str,
    interval: str = "0s",
    extra: dict[str, str] | None = None,
) -> None:
    attrs = {
        "id": f"{rid}-{name}-{interval}",
        "name": name,
        "interval": interval,
        "timeout": timeout,
    }
    op = ET.SubElement(ops, "op", attrs)
    if extra:
        _nvset(op, "instance_attributes", f"{rid}-{name}-{interval}-attrs", extra)


def fence_device(cfg: LabConfig) -> ET.Element:
    prim = ET.Element("primitive", id=FENCE_DEVICE_ID, type=FENCE_AGENT)
    prim.set("class", "stonith")
    _nvset(
        prim,
        "instance_attributes",
        f"{FENCE_DEVICE_ID}-attrs",
        {
            "socket": str(cfg.pdu_socket),
            "pcmk_host_list": " ".join(cfg.host_names()),
            # Like a PDU outlet switched off: a fenced host stays off until it is powered on.
            "pcmk_reboot_action": "off",
        },
    )
    ops = ET.SubElement(prim, "operations")
    _op(ops, FENCE_DEVICE_ID, "monitor", "20s", "60s")
    return prim


def guest_resource(cfg: LabConfig, guest: str) -> ET.Element:
    provider_class, provider, agent = AGENTS[cfg.agent].split(":")
    prim = ET.Element("primitive", id=guest, provider=provider, type=agent)
    prim.set("class", provider_class)
    params = {
        "config": str(cfg.guests_dir / f"{guest}.xml"),
        "hypervisor": "qemu:///system",
        "migration_transport": "tcp",
    }
    if cfg.agent == "Guest":
        # software HA: the deep monitor (OCF_CHECK_LEVEL=10) asks the guest agent and the
        # guest's own HTTP service
        params["shutdown_timeout"] = "60" if cfg.real_guests else "20"
        params["health_agent_ping"] = "true"
        if not cfg.guest_cluster and not cfg.remote_nodes:
            # nginx runs in every guest only then: in a guest cluster it runs on one member
            # (its resource), in a guest node as a host-cluster resource
            params["health_http"] = f"http://{cfg.guest_address(guest)}/health"
    if cfg.real_guests:
        # The hosts of a lab share one local file system: libvirt 9.0 sees the images as
        # local storage and refuses a live migration ("Migration without shared storage
        # is unsafe"; it knows NFS, GFS2, OCFS2, Ceph... and 9.0 has no qemu.conf
        # shared_filesystems). Here the storage is shared, so the lab says so, as an admin
        # would with VirtualDomain; a real cluster on NFS or GFS2 needs no such option.
        params["migrate_options"] = "--unsafe"
    _nvset(prim, "instance_attributes", f"{guest}-attrs", params)
    meta = {"allow-migrate": "true"}
    if cfg.remote_nodes:
        # a Pacemaker Remote guest node: the host cluster runs resources inside it
        meta.update(
            {
                "remote-node": cfg.remote_node_name(guest),
                "remote-addr": cfg.guest_address(guest),
                "remote-connect-timeout": "300s",
            }
        )
    _nvset(prim, "meta_attributes", f"{guest}-meta", meta)
    ops = ET.SubElement(prim, "operations")
    # a Debian guest boots under TCG in 30-40 s alone, and several at once share 2 cores
    _op(ops, guest, "start", "300s" if cfg.real_guests else "60s")
    _op(ops, guest, "stop", "120s" if cfg.real_guests else "60s")
    _op(ops, guest, "monitor", "30s", "10s")
    if cfg.agent == "Guest":
        _op(ops, guest, "monitor", "30s", "15s", {"OCF_CHECK_LEVEL": "10"})
    _op(ops, guest, "migrate_to", "120s")
    _op(ops, guest, "migrate_from", "60s")
    return prim


def resources_xml(cfg: LabConfig) -> str:
    """The fence device and every guest, as one <resources> fragment for cibadmin."""
    res = ET.Element("resources")
    res.append(fence_device(cfg))
    for g in cfg.guest_names():
        res.append(guest_resource(cfg, g))
        if cfg.remote_nodes:
            res.append(guest_service(cfg, g))
    return ET.tostring(res, encoding="unicode")


def guest_service(cfg: LabConfig, guest: str) -> ET.Element:
    """nginx inside guest node guest, as a host-cluster resource."""
    rid = cfg.service_id(guest)
    prim = ET.Element("primitive", id=rid, type="nginx")
    prim.set("class", "systemd")
    ops = ET.SubElement(prim, "operations")
    _op(ops, rid, "monitor", "60s", "10s")
    _op(ops, rid, "start", "100s")
    _op(ops, rid, "stop", "100s")
    return prim


def constraints_xml(cfg: LabConfig) -> str:
    """Guest-cluster members prefer different hosts (a preference, not a rule: with a
    host down, two members share a host rather than one staying down)."""
    cons = ET.Element("constraints")
    if cfg.remote_nodes:
        for g in cfg.guest_names():
            rid = cfg.service_id(g)
            # only inside its own guest node: never probed or run on a host
            loc = ET.SubElement(
                cons,
                "rsc_location",
                {"id": f"{rid}-not-hosts", "rsc": rid, "resource-discovery": "never"},
            )
            rule = ET.SubElement(loc, "rule", {"id": f"{rid}-not-hosts-rule", "score": "-INFINITY"})
            ET.SubElement(
                rule,
                "expression",
                {
                    "id": f"{rid}-not-hosts-expr",
                    # a guest node's #kind is "container" ("remote" is an
                    # ocf:pacemaker:remote node): ban the cluster nodes, not the others
                    "attribute": "#kind",
                    "operation": "eq",
                    "value": "cluster",
                },
            )
            ET.SubElement(
                cons,
                "rsc_location",
                {
                    "id": f"{rid}-in-{g}",
                    "rsc": rid,
                    "node": cfg.remote_node_name(g),
                    "score": "INFINITY",
                },
            )
            for other in cfg.guest_names():
                if other != g:
                    ET.SubElement(
                        cons,
                        "rsc_location",
                        {
                            "id": f"{rid}-not-{other}",
                            "rsc": rid,
                            "node": cfg.remote_node_name(other),
                            "score": "-INFINITY",
                            "resource-discovery": "never",
                        },
                    )
    if cfg.guest_cluster:
        names = cfg.guest_names()
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                # below resource-stickiness (100): the members start spread, and moving
                # one onto another's host moves only that one (at -1000 Pacemaker would
                # live-migrate the others around to keep them apart)
                attrs = {"id": f"spread-{a}-{b}", "rsc": a, "with-rsc": b, "score": "-50"}
                ET.SubElement(cons, "rsc_colocation", attrs)
    return ET.tostring(cons, encoding="unicode")


PACEMAKER_DIRS = (
    ("var/lib/pacemaker", 0o750),
    ("var/lib/pacemaker/cib", 0o750),
    ("var/lib/pacemaker/pengine", 0o750),
    ("var/lib/pacemaker/blackbox", 0o750),
    ("var/lib/pacemaker/cores", 0o750),
    ("var/log/pacemaker", 0o770),
    ("var/log/pacemaker/bundles", 0o770),
)


def write_cluster_disk(root: Path, corosync_conf: str, authkey: bytes, cib: str) -> None:
    """Below root, the cluster stack's part of a lab node's private directories:
    corosync.conf, its authkey (0400), Pacemaker's directories (owned by hacluster) and
    the CIB it starts from."""
    hacluster = pwd.getpwnam("hacluster")
    uid, gid = hacluster.pw_uid, hacluster.pw_gid
    (root / "etc/corosync").mkdir(parents=True, exist_ok=True)
    (root / "etc/corosync/corosync.conf").write_text(corosync_conf)
    key = root / "etc/corosync/authkey"
    key.write_bytes(authkey)
    key.chmod(0o400)
    for d, mode in PACEMAKER_DIRS:
        p = root / d
        p.mkdir(parents=True, exist_ok=True)
        p.chmod(mode)
        os.chown(p, uid, gid)
    cibfile = root / "var/lib/pacemaker/cib/cib.xml"
    cibfile.write_text(cib)
    cibfile.chmod(0o600)
    os.chown(cibfile, uid, gid)
