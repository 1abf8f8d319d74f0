"""A second Pacemaker cluster on the lab switch that plays a cluster running in guests.

The lab's guests are busybox VMs without Python or Pacemaker, so the guest cluster's
nodes are namespaces of their own (``<tag>-gN``, role ``guest-cluster`` of hostinit:
corosync and pacemaker only), each named like the real lab domain it is paired with
(``guest1`` ... at ``10.77.0.201`` ...). Its stonith device runs fence_kvmha against the
hosts' listeners over the lab network, so fencing node ``guestN`` powers the real domain
``guestN`` off, wherever it runs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from kvmha.errors import KvmhaError
from kvmha.fence.agent import DEFAULT_PORT, key_text
from kvmha.fence.keys import Scope, new_secret, write_private
from kvmha.pcmk import CRM_MON_ARGV, ClusterState, parse_crm_mon
from kvmha.process import clean_env, module_argv, pid_alive, run, signal_pid
from kvmha.tools.lab import clusterconf, network, power
from kvmha.tools.lab.hostinit import ROLE_GUEST_CLUSTER
from kvmha.tools.lab.lab import Lab

KEY_NAME = "gcluster"
GUEST_KEY_PATH = "/etc/kvmha/gcluster-fence.key"  # inside the guest-cluster nodes
DEVICE_ID = "fence-kvmha"


class GuestCluster:
    def __init__(self, lab: Lab, nodes: Sequence[str] = ("guest1", "guest2", "guest3")) -> None:
        self.lab = lab
        self.cfg = lab.cfg
        self.nodes = list(nodes)

    # ---- names ---------------------------------------------------------------
    def pid_file(self, node: str) -> Path:
        return self.cfg.run_dir / f"gc-{node}.pid"

    def init_pid(self, node: str) -> int | None:
        try:
            return int(self.pid_file(node).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def running(self, node: str) -> bool:
        pid = self.init_pid(node)
        return pid is not None and pid_alive(pid)

    def listener_addresses(self) -> str:
        return ",".join(self.cfg.host_address(h) for h in self.cfg.host_names())

    # ---- set-up --------------------------------------------------------------
    def corosync_conf(self) -> str:
        nodes = "".join(
            "    node {\n"
            f"        ring0_addr: {self.cfg.gc_address(n)}\n"
            f"        name: {n}\n"
            f"        nodeid: {self.cfg.gc_node_index(n)}\n"
            "    }\n"
            for n in self.nodes
        )
        return (
            "totem {\n    version: 2\n    cluster_name: kvmhaguests\n    transport: knet\n"
            "    token: 1000\n    crypto_cipher: aes256\n    crypto_hash: sha256\n}\n"
            f"nodelist {{\n{nodes}}}\n"
            "quorum {\n    provider: corosync_votequorum\n}\n"
            "logging {\n    to_logfile: yes\n    logfile: /var/log/corosync/corosync.log\n"
            "    to_syslog: no\n    to_stderr: no\n    timestamp: on\n}\n"
        )

    def stonith_xml(self) -> str:
        prim = ET.Element("primitive", id=DEVICE_ID, type="fence_kvmha")
        prim.set("class", "stonith")
        attrs = ET.SubElement(prim, "instance_attributes", id=f"{DEVICE_ID}-attrs")
        for name, value in (
            ("ip", self.listener_addresses()),
            ("ipport", str(DEFAULT_PORT)),
            ("key_file", GUEST_KEY_PATH),
            ("pcmk_host_list", " ".join(self.nodes)),
            ("login_timeout", "3"),
        ):
            ET.SubElement(attrs, "nvpair", id=f"{DEVICE_ID}-{name}", name=name, value=value)
        ops = ET.SubElement(prim, "operations")
        ET.SubElement(
            ops, "op", id=f"{DEVICE_ID}-monitor", name="monitor", interval="60s", timeout="20s"
        )
        res = ET.Element("resources")
        res.append(prim)
        return ET.tostring(res, encoding="unicode")

    def prepare(self) -> None:
        cfg = self.cfg
        shutil.rmtree(cfg.gc_dir, ignore_errors=True)
        cfg.gc_dir.mkdir(parents=True)
        names = [f"{cfg.gc_address(n)} {n}" for n in self.nodes]
        names += [f"{cfg.host_address(h)} {h}" for h in cfg.host_names()]
        (cfg.gc_dir / "hosts.txt").write_text(
            "127.0.0.1 localhost\n::1 localhost\n" + "\n".join(names) + "\n"
        )
        authkey = secrets.token_bytes(256)
        cib = clusterconf.seed_cib(run(["cibadmin", "--empty"]).stdout)
        secret = new_secret()
        scope = Scope("domains", tuple(self.nodes))
        for node in self.nodes:
            self._prepare_node(cfg.gc_node_dir(node), authkey, cib)
            write_private(
                cfg.gc_node_dir(node) / "etc/kvmha/gcluster-fence.key", key_text(KEY_NAME, secret)
            )
        # the hosts' side: the key and its scope, where every listener reads it
        for host in cfg.host_names():
            keys = cfg.host_dir(host) / "etc/kvmha/fence/keys"
            write_private(keys / f"{KEY_NAME}.key", key_text(KEY_NAME, secret, scope.as_fields()))

    def _prepare_node(self, nd: Path, authkey: bytes, cib: str) -> None:
        """The private directories hostinit binds, for a node without libvirt."""
        for d in (
            "etc/corosync",
            "etc/kvmha",
            "etc/libvirt",
            "var/lib/corosync",
            "var/log/corosync",
            "var/lib/libvirt",
            "var/log/libvirt",
            "var/cache/libvirt",
            "tmp",
            "run/libvirt",
            "var/log/kvmha",
            "var/lib/kvmha",
        ):
            (nd / d).mkdir(parents=True, exist_ok=True)
        (nd / "tmp").chmod(0o1777)
        (nd / "etc/kvmha").chmod(0o750)
        clusterconf.write_cluster_disk(nd, self.corosync_conf(), authkey, cib)

    def boot(self, node: str) -> None:
        r = subprocess.run(
            module_argv(
                "kvmha.tools.lab.hostinit", "boot", str(self.cfg.labdir), node, ROLE_GUEST_CLUSTER
            ),
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if r.returncode != 0 or not r.stdout.strip().isdigit():
            raise KvmhaError(f"could not boot guest-cluster node {node}: {r.stderr.strip()}")
        self.pid_file(node).write_text(r.stdout.strip() + "\n")

    def up(self) -> None:
        self.prepare()
        for node in self.nodes:
            network.create_node(
                self.cfg,
                self.cfg.gc_netns(node),
                self.cfg.gc_switch_port(node),
                self.cfg.gc_address(node),
            )
            self.boot(node)
        self.lab.wait("the guest cluster online and quorate", self.all_online, 120)
        self.run_in(
            self.nodes[0],
            ["cibadmin", "--replace", "-o", "resources", "--xml-text", self.stonith_xml()],
        )
        self.lab.wait("the guest cluster's fence device started", self.device_started, 60)

    # ---- running things ------------------------------------------------------
    def _nsenter(self, node: str, argv: Sequence[str]) -> list[str]:
        pid = self.init_pid(node)
        if pid is None or not pid_alive(pid):
            raise KvmhaError(f"guest-cluster node {node} is not running")
        return ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "--wd=/", "--", *argv]

    def run_in(
        self, node: str, argv: Sequence[str], timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(self._nsenter(node, argv), timeout=timeout, check=check, env=clean_env())

    def state(self, prefer: str | None = None) -> ClusterState | None:
        order = [prefer] if prefer else []
        for node in order + [n for n in self.nodes if n != prefer]:
            if not self.running(node):
                continue
            r = self.run_in(node, CRM_MON_ARGV, timeout=20, check=False)
            if r.returncode == 0 and r.stdout.strip():
                return parse_crm_mon(r.stdout)
        return None

    def all_online(self) -> bool:
        st = self.state()
        return bool(st and st.quorate and len(st.online_nodes()) == len(self.nodes))

    def device_started(self) -> bool:
        st = self.state()
        return bool(st and st.running_on(DEVICE_ID))

    def restart(self, node: str) -> None:
        """Power-cycle a node's namespaces (after it was fenced, its pacemaker stops)."""
        self.kill(node)
        self.boot(node)

    def kill(self, node: str) -> None:
        pid = self.init_pid(node)
        if pid is not None and pid_alive(pid):
            signal_pid(pid, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and power.netns_pids(self.cfg.gc_netns(node)):
                time.sleep(0.05)
        self.pid_file(node).unlink(missing_ok=True)

    def down(self) -> None:
        for node in self.nodes:
            self.kill(node)
            ns = self.cfg.gc_netns(node)
            for p in power.netns_pids(ns):
                signal_pid(p, signal.SIGKILL)
            if ns in network.existing_netns():
                run(["ip", "netns", "del", ns], check=False)
        for host in self.cfg.host_names():
            (self.cfg.host_dir(host) / f"etc/kvmha/fence/keys/{KEY_NAME}.key").unlink(
                missing_ok=True
            )
        os.sync()
