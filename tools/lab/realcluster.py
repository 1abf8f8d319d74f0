"""A real guest cluster: Pacemaker inside the lab's Debian guests, fencing through kvmha.

Its nodes are the lab's domains (guest1 ... at 10.77.0.101 ...), with corosync nodeid N
for guestN. Everything a member needs arrives on its seed disk (see debimage): corosync.conf
and authkey, /etc/hosts, and its fence key (the guest half of a key that every host's
fence listener holds with the scope "domains guest1 ... guestN", the format
``kvmha fence key create`` writes). The stonith device runs fence_kvmha (in the image at
/usr/sbin/fence_kvmha) against every host's listener over the guests' network; the
service is nginx with a floating address (group ``web``: IPaddr2 10.77.0.99 + systemd:nginx).

The lab reaches inside the guests only through the QEMU guest agent (guestexec).
"""

from __future__ import annotations

import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Protocol

from kvmha.errors import KvmhaError
from kvmha.fence.agent import DEFAULT_PORT
from kvmha.fence.keys import Scope, guest_key_text, host_key_file_text, new_secret, write_private
from kvmha.pcmk import CRM_MON_ARGV, ClusterState, parse_crm_mon
from kvmha.tools.lab.config import GUEST_CLUSTER_TOKEN_MS, LabConfig
from kvmha.tools.lab.guestexec import GuestExecError, guest_exec, running_on

KEY_NAME = "gcluster"
GUEST_KEY_PATH = "/etc/kvmha/fence.key"
DEVICE_ID = "fence-kvmha"
SERVICE_GROUP = "web"
SERVICE_ID = "nginx"
VIP_ID = "vip"
CLUSTER_OPTIONS = {
    "stonith-enabled": "true",
    # a fence through kvmha waits for the host cluster when a host lost power
    "stonith-timeout": "180s",
    "no-quorum-policy": "stop",
    "cluster-recheck-interval": "1min",
}


def corosync_conf(cfg: LabConfig) -> str:
    nodes = "".join(
        "    node {\n"
        f"        ring0_addr: {cfg.guest_address(g)}\n"
        f"        name: {g}\n"
        f"        nodeid: {cfg.guest_nodeid(g)}\n"
        "    }\n"
        for g in cfg.guest_names()
    )
    return (
        "# kvmha lab guest cluster (written by 'kvmha lab up --guest-cluster')\n"
        "totem {\n    version: 2\n    cluster_name: kvmhaguests\n    transport: knet\n"
        f"    token: {GUEST_CLUSTER_TOKEN_MS}\n"
        "    crypto_cipher: aes256\n    crypto_hash: sha256\n}\n"
        f"nodelist {{\n{nodes}}}\n"
        "quorum {\n    provider: corosync_votequorum\n}\n"
        "logging {\n    to_syslog: yes\n    to_stderr: no\n    timestamp: on\n}\n"
    )


def hosts_file(cfg: LabConfig) -> str:
    names = [f"{cfg.host_address(h)} {h}" for h in cfg.host_names()]
    names += [f"{cfg.guest_address(g)} {g}" for g in cfg.guest_names()]
    return "127.0.0.1 localhost\n::1 localhost\n" + "\n".join(names) + "\n"


def seed_files(cfg: LabConfig) -> dict[str, tuple[dict[str, tuple[bytes, int]], list[str]]]:
    """Per guest: (files, units) of its seed disk. With a guest cluster, also the hosts'
    half of the fence key, in every host's listener key directory."""
    out: dict[str, tuple[dict[str, tuple[bytes, int]], list[str]]] = {}
    common = {"/etc/hosts": (hosts_file(cfg).encode(), 0o644)}
    if cfg.remote_nodes:
        files = dict(common)
        files["/etc/pacemaker/authkey"] = (remote_key(cfg), 0o400)
        for g in cfg.guest_names():
            out[g] = (dict(files), ["pacemaker_remote.service"])
        return out
    if not cfg.guest_cluster:
        for g in cfg.guest_names():
            out[g] = (dict(common), ["nginx.service"])
        return out
    authkey = secrets.token_bytes(256)
    secret = new_secret()
    scope = Scope("domains", tuple(cfg.guest_names()))
    for host in cfg.host_names():
        keys = cfg.host_dir(host) / "etc/kvmha/fence/keys"
        write_private(keys / f"{KEY_NAME}.key", host_key_file_text(KEY_NAME, secret, scope))
    for g in cfg.guest_names():
        files = dict(common)
        files["/etc/corosync/corosync.conf"] = (corosync_conf(cfg).encode(), 0o644)
        files["/etc/corosync/authkey"] = (authkey, 0o400)
        files[GUEST_KEY_PATH] = (guest_key_text(KEY_NAME, secret).encode(), 0o600)
        out[g] = (files, ["corosync.service", "pacemaker.service"])
    return out


def remote_key(cfg: LabConfig) -> bytes:
    """The lab's Pacemaker Remote authkey (hosts and guest nodes), made once per lab."""
    f = cfg.labdir / "pacemaker-authkey"
    if not f.exists():
        f.write_bytes(secrets.token_bytes(256))
        f.chmod(0o600)
    return f.read_bytes()


def _nvpairs(parent: ET.Element, tag: str, set_id: str, values: dict[str, str]) -> None:
    nvs = ET.SubElement(parent, tag, id=set_id)
    for name, value in values.items():
        ET.SubElement(nvs, "nvpair", id=f"{set_id}-{name}", name=name, value=value)


def _op(ops: ET.Element, rid: str, name: str, interval: str, timeout: str) -> None:
    ET.SubElement(
        ops, "op", id=f"{rid}-{name}-{interval}", name=name, interval=interval, timeout=timeout
    )


def resources_xml(cfg: LabConfig) -> str:
    res = ET.Element("resources")
    dev = ET.SubElement(res, "primitive", id=DEVICE_ID, type="fence_kvmha")
    dev.set("class", "stonith")
    _nvpairs(
        dev,
        "instance_attributes",
        f"{DEVICE_ID}-attrs",
        {
            "ip": ",".join(cfg.host_address(h) for h in cfg.host_names()),
            "ipport": str(DEFAULT_PORT),
            "key_file": GUEST_KEY_PATH,
            "pcmk_host_list": " ".join(cfg.guest_names()),
            "login_timeout": "5",
        },
    )
    ops = ET.SubElement(dev, "operations")
    _op(ops, DEVICE_ID, "monitor", "120s", "60s")
    group = ET.SubElement(res, "group", id=SERVICE_GROUP)
    vip = ET.SubElement(group, "primitive", id=VIP_ID, provider="heartbeat", type="IPaddr2")
    vip.set("class", "ocf")
    _nvpairs(
        vip,
        "instance_attributes",
        f"{VIP_ID}-attrs",
        {"ip": cfg.gc_vip, "cidr_netmask": "24", "nic": "eth0"},
    )
    ops = ET.SubElement(vip, "operations")
    _op(ops, VIP_ID, "monitor", "20s", "60s")
    _op(ops, VIP_ID, "start", "0s", "60s")
    _op(ops, VIP_ID, "stop", "0s", "60s")
    web = ET.SubElement(group, "primitive", id=SERVICE_ID, type="nginx")
    web.set("class", "systemd")
    ops = ET.SubElement(web, "operations")
    _op(ops, SERVICE_ID, "monitor", "20s", "60s")
    _op(ops, SERVICE_ID, "start", "0s", "100s")
    _op(ops, SERVICE_ID, "stop", "0s", "100s")
    return ET.tostring(res, encoding="unicode")


def crm_config_xml() -> str:
    cfg = ET.Element("crm_config")
    _nvpairs(cfg, "cluster_property_set", "lab-options", CLUSTER_OPTIONS)
    return ET.tostring(cfg, encoding="unicode")


class LabLike(Protocol):
    """What the guest cluster needs of kvmha.tools.lab.lab.Lab (which imports this)."""

    @property
    def cfg(self) -> LabConfig: ...

    def say(self, msg: str) -> None: ...

    def wait(
        self, what: str, cond: Callable[[], bool], timeout: float, interval: float = 0.25
    ) -> float: ...


class RealGuestCluster:
    def __init__(self, lab: LabLike) -> None:
        self.lab = lab
        self.cfg = lab.cfg
        self.nodes = self.cfg.guest_names()

    # ---- reaching inside -------------------------------------------------------
    def exec(self, node: str, argv: Sequence[str], timeout: float = 60.0) -> tuple[int, str, str]:
        return guest_exec(self.cfg, node, argv, timeout=timeout)

    def running(self, node: str) -> bool:
        return bool(running_on(self.cfg, node))

    def state(self, prefer: str | None = None) -> ClusterState | None:
        order = ([prefer] if prefer else []) + [n for n in self.nodes if n != prefer]
        for node in order:
            try:
                rc, out, _ = self.exec(node, list(CRM_MON_ARGV), timeout=30)
            except GuestExecError:
                continue
            if rc == 0 and out.strip():
                return parse_crm_mon(out)
        return None

    def all_online(self) -> bool:
        st = self.state()
        return bool(st and st.quorate and len(st.online_nodes()) == len(self.nodes))

    def service_node(self, st: ClusterState | None = None, prefer: str | None = None) -> str | None:
        st = st or self.state(prefer)
        return st.running_on(SERVICE_ID) if st else None

    def device_started(self) -> bool:
        st = self.state()
        return bool(st and st.running_on(DEVICE_ID))

    def nginx_active(self, node: str) -> bool | None:
        """Is nginx active inside node (None: the guest does not answer)?"""
        try:
            rc, out, _ = self.exec(node, ["/bin/systemctl", "is-active", "nginx"], timeout=5)
        except GuestExecError:
            return None
        return rc == 0 and out.strip() == "active"

    def cib(self, node: str, *args: str) -> None:
        rc, out, err = self.exec(node, ["/usr/sbin/cibadmin", *args], timeout=60)
        if rc != 0:
            raise KvmhaError(f"cibadmin {' '.join(args[:3])} in {node} failed: {err or out}")

    # ---- forming it ------------------------------------------------------------
    def form(self) -> float:
        """Wait for membership and quorum, then configure fencing and the service."""
        t0 = time.monotonic()
        took = self.lab.wait("the guest cluster online and quorate", self.all_online, 600, 2.0)
        self.lab.say(f"guest cluster of {len(self.nodes)} online and quorate ({took:.1f} s)")
        first = self.nodes[0]
        self.cib(first, "--replace", "-o", "crm_config", "--xml-text", crm_config_xml())
        self.cib(first, "--replace", "-o", "resources", "--xml-text", resources_xml(self.cfg))
        self.lab.wait(
            "the guest cluster's fence device and service started",
            lambda: bool(
                (st := self.state()) and st.running_on(DEVICE_ID) and self.service_node(st)
            ),
            300,
            2.0,
        )
        took = time.monotonic() - t0
        self.lab.say(f"guest cluster formed, fencing and nginx started ({took:.1f} s)")
        return took
