"""``kvmha lab``: a host cluster of 1 to 5 hosts on this one machine.

Each host is a set of namespaces with its own corosync, pacemaker, libvirtd and
virtlogd (see hostinit); a power switch outside the hosts cuts and restores their
power (see power); a switch namespace connects their cables (see network). All state
lives below the lab directory. Processes are stopped by PID, never by name.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kvmha.errors import KvmhaError, UsageError
from kvmha.pcmk import CRM_MON_ARGV, ClusterState, parse_crm_mon
from kvmha.process import clean_env, module_argv, pid_alive, run, signal_pid
from kvmha.tools.lab import clusterconf, libvirtconf, network, power
from kvmha.tools.lab.config import AGENTS, LabConfig, check_labdir
from kvmha.tools.lab.image import DEFAULT_CACHE, ensure_image

Progress = Callable[[str], None]


REQUIRED_TOOLS = (
    "/usr/sbin/corosync",
    "/usr/sbin/pacemakerd",
    "/usr/sbin/libvirtd",
    "/usr/sbin/virtlogd",
    "/usr/sbin/virtlockd",
    "/usr/bin/qemu-system-x86_64",
    "/usr/bin/nsenter",
    "/usr/sbin/cibadmin",
    "/usr/sbin/crm_mon",
)
AGENT_PATHS = {
    "Guest": "/usr/lib/ocf/resource.d/kvmha/Guest",
    "VirtualDomain": "/usr/lib/ocf/resource.d/heartbeat/VirtualDomain",
}
FENCE_AGENT_PATH = "/usr/sbin/fence_kvmhalab"
READY_MARKER = "KVMHA-GUEST-READY"


def _quiet(_: str) -> None:
    pass


def check_prerequisites(agent: str) -> None:
    if os.geteuid() != 0:
        raise KvmhaError("the lab needs root (namespaces, mounts, daemons)", "run it as root")
    missing = [
        t
        for t in (*REQUIRED_TOOLS, AGENT_PATHS[agent], FENCE_AGENT_PATH)
        if not os.access(t, os.X_OK)
    ]
    if missing:
        raise KvmhaError(f"missing on this machine: {', '.join(missing)}", "run scripts/setup.sh")
    try:
        pwd.getpwnam("libvirt-qemu")
        pwd.getpwnam("hacluster")
    except KeyError as exc:
        raise KvmhaError(f"user {exc} is missing", "run scripts/setup.sh") from exc


class Lab:
    def __init__(self, labdir: Path, progress: Progress = _quiet) -> None:
        self.labdir = check_labdir(labdir)
        self.say = progress
        self._cfg = LabConfig.load(self.labdir)

    # ---- state -------------------------------------------------------------
    @property
    def cfg(self) -> LabConfig:
        if self._cfg is None:
            raise KvmhaError(f"no lab in {self.labdir}", "run 'kvmha lab up' first")
        return self._cfg

    def is_configured(self) -> bool:
        return self._cfg is not None

    def powered(self, host: str) -> bool:
        return power.is_on(self.cfg, host)

    def pdu_pid(self) -> int | None:
        try:
            return int((self.cfg.run_dir / "power.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    # ---- running things inside hosts --------------------------------------
    def _nsenter(self, host: str, argv: Sequence[str]) -> list[str]:
        pid = power.init_pid(self.cfg, host)
        if pid is None or not pid_alive(pid):
            raise KvmhaError(f"{host} is powered off", f"run 'kvmha lab power-on {host}'")
        return ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "--wd=/", "--", *argv]

    def run_in(
        self, host: str, argv: Sequence[str], timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run(self._nsenter(host, argv), timeout=timeout, check=check, env=clean_env())

    def exec_in(self, host: str, argv: Sequence[str]) -> int:
        """Run argv inside host with the caller's terminal; return its exit code."""
        self.cfg.host_index(host)
        if not argv:
            raise UsageError("no command given", "use: kvmha lab exec HOST -- CMD ...")
        env = clean_env({"TERM": os.environ.get("TERM", "dumb")})
        return subprocess.call(self._nsenter(host, argv), env=env)

    def cluster_state(self, prefer: str | None = None) -> ClusterState | None:
        """The host cluster as one online host sees it (None when no host answers)."""
        hosts = self.cfg.host_names()
        if prefer:
            hosts = [prefer] + [h for h in hosts if h != prefer]
        for host in hosts:
            if not self.powered(host):
                continue
            r = self.run_in(host, CRM_MON_ARGV, timeout=20, check=False)
            if r.returncode == 0 and r.stdout.strip():
                return parse_crm_mon(r.stdout)
        return None

    def wait(
        self, what: str, cond: Callable[[], bool], timeout: float, interval: float = 0.25
    ) -> float:
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            if cond():
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise KvmhaError(
                    f"timed out after {timeout:.0f} s waiting for {what}",
                    "see 'kvmha lab logs HOST'",
                )
            time.sleep(interval)

    # ---- up -----------------------------------------------------------------
    def up(
        self,
        hosts: int,
        guests: int,
        agent: str = "Guest",
        token_ms: int = 1000,
        guest_image: str = "busybox",
        guest_cluster: bool = False,
    ) -> None:
        wanted = LabConfig(self.labdir, hosts, guests, agent, token_ms, guest_image, guest_cluster)
        t0 = time.monotonic()
        if self._cfg is not None:
            have = self._cfg
            if (have.hosts, have.guests, have.agent, have.guest_image, have.guest_cluster) != (
                hosts,
                guests,
                agent,
                guest_image,
                guest_cluster,
            ):
                raise UsageError(
                    f"the lab in {self.labdir} is up with {have.hosts} hosts, {have.guests} "
                    f"{have.guest_image} guests and {have.agent}",
                    "run 'kvmha lab down' first to change its size",
                )
            self.say(f"lab in {self.labdir} exists: checking it")
        else:
            check_prerequisites(agent)
            self._prepare(wanted)
            self._cfg = wanted
        cfg = self.cfg
        network.create(cfg)
        self._ensure_power_switch()
        for host in cfg.host_names():
            if not self.powered(host):
                self.say(f"powering on {host} ({cfg.host_address(host)})")
                power.request(cfg.pdu_socket, "on", host, "lab-up")
        took = self.wait("every host online in a quorate cluster", self._all_online, 180)
        self.say(f"{cfg.hosts} host(s) online, cluster quorate ({took:.1f} s)")
        if not self._resources_configured():
            self.say(f"adding the fence device and {cfg.guests} guest(s) ({AGENTS[agent]})")
            self.run_in(
                cfg.host_names()[0],
                [
                    "cibadmin",
                    "--replace",
                    "-o",
                    "resources",
                    "--xml-text",
                    clusterconf.resources_xml(cfg),
                ],
            )
            if cfg.guest_cluster or cfg.remote_nodes:  # (references the guests: after them)
                self.run_in(
                    cfg.host_names()[0],
                    [
                        "cibadmin",
                        "--replace",
                        "-o",
                        "constraints",
                        "--xml-text",
                        clusterconf.constraints_xml(cfg),
                    ],
                )
        if cfg.guests:
            took = self.wait(
                f"{cfg.guests} guest(s) running and ready",
                self._guests_ready,
                600 if cfg.real_guests else 240,
                interval=0.5,
            )
            self.say(f"{cfg.guests} guest(s) running and ready ({took:.1f} s)")
        if cfg.guest_cluster:
            from kvmha.tools.lab.realcluster import RealGuestCluster

            RealGuestCluster(self).form()
        self.say(f"lab up in {time.monotonic() - t0:.1f} s")

    def _all_online(self) -> bool:
        st = self.cluster_state()
        return bool(st and st.quorate and st.dc and len(st.online_nodes()) == self.cfg.hosts)

    def _resources_configured(self) -> bool:
        r = self.run_in(
            self.cfg.host_names()[0], ["cibadmin", "-Q", "-o", "resources"], check=False, timeout=20
        )
        return clusterconf.FENCE_DEVICE_ID in r.stdout

    def guest_ready_since(self, guest: str, offset: int) -> bool:
        log = self.cfg.guests_dir / f"{guest}.serial.log"
        try:
            with open(log, "rb") as f:
                f.seek(offset)
                return READY_MARKER.encode() in f.read()
        except FileNotFoundError:
            return False

    def serial_log_size(self, guest: str) -> int:
        try:
            return (self.cfg.guests_dir / f"{guest}.serial.log").stat().st_size
        except FileNotFoundError:
            return 0

    def _guests_ready(self) -> bool:
        st = self.cluster_state()
        if st is None:
            return False
        return all(
            st.running_on(g) and self.guest_ready_since(g, 0) for g in self.cfg.guest_names()
        )

    def _ensure_power_switch(self) -> None:
        pid = self.pdu_pid()
        if pid is not None and pid_alive(pid):
            return
        cfg = self.cfg
        log = open(cfg.pdu_dir / "power.log", "ab")  # noqa: SIM115 - handed to the daemon
        proc = subprocess.Popen(
            module_argv("kvmha.tools.lab.power", str(cfg.labdir)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=clean_env(),
        )
        log.close()
        (cfg.run_dir / "power.pid").write_text(f"{proc.pid}\n")
        self.wait("the lab power switch", cfg.pdu_socket.exists, 10, 0.05)

    def _prepare(self, cfg: LabConfig) -> None:
        """A fresh lab directory: configuration, host disks, guest definitions."""
        self.say(f"preparing {cfg.labdir}")
        cfg.labdir.mkdir(parents=True, exist_ok=True)
        for name in ("hosts", "guests", "run", "power", "image", "locks"):
            shutil.rmtree(cfg.labdir / name, ignore_errors=True)
        for d in (cfg.run_dir, cfg.guests_dir, cfg.pdu_dir, cfg.image_dir, cfg.lockspace_dir):
            d.mkdir(parents=True)
        cfg.pdu_dir.chmod(0o700)
        if cfg.real_guests:
            self._prepare_debian_image(cfg)
        else:
            image = ensure_image(DEFAULT_CACHE)
            for src, name in ((image.kernel, "vmlinuz"), (image.initrd, "initrd.img")):
                shutil.copy2(src, cfg.image_dir / name)
        names = [f"{cfg.host_address(h)} {h}" for h in cfg.host_names()]
        names += [f"{cfg.guest_address(g)} {g}" for g in cfg.guest_names()]
        (cfg.labdir / "hosts.txt").write_text(
            "127.0.0.1 localhost\n::1 localhost\n" + "\n".join(names) + "\n"
        )
        authkey = secrets.token_bytes(256)
        corosync_conf = clusterconf.corosync_conf(cfg)
        cib = clusterconf.seed_cib(run(["cibadmin", "--empty"]).stdout)
        for host in cfg.host_names():
            self._prepare_host(cfg, host, authkey, corosync_conf, cib)
        self._prepare_fence_listeners(cfg)
        if cfg.real_guests:
            self._prepare_debian_guests(cfg)
        domain_xml = (
            libvirtconf.debian_domain_xml if cfg.real_guests else libvirtconf.guest_domain_xml
        )
        for guest in cfg.guest_names():
            xml = domain_xml(
                cfg, guest, str(cfg.image_dir / "vmlinuz"), str(cfg.image_dir / "initrd.img")
            )
            (cfg.guests_dir / f"{guest}.xml").write_text(xml)
        cfg.save()

    def _prepare_debian_image(self, cfg: LabConfig) -> None:
        """The Debian image's base disk, kernel and initramfs in the shared image directory
        (hard links into the cache when they share a file system: the base is never
        written, a rebuild replaces the cache's file and leaves this lab's inode alone)."""
        from kvmha.tools.lab import debimage

        img = debimage.ensure_image(cfg.image_variant, say=self.say)
        for src, name in (
            (img.disk, "base.img"),
            (img.kernel, "vmlinuz"),
            (img.initrd, "initrd.img"),
        ):
            dst = cfg.image_dir / name
            dst.unlink(missing_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

    def _prepare_debian_guests(self, cfg: LabConfig) -> None:
        """Each guest's own overlay disk and seed disk (identity, configuration)."""
        from kvmha.tools.lab import debimage, realcluster

        seeds = realcluster.seed_files(cfg)
        for guest in cfg.guest_names():
            debimage.make_overlay(cfg.image_dir / "base.img", cfg.guest_disk(guest))
            files, units = seeds[guest]
            debimage.make_seed(cfg.guest_seed(guest), files, units)

    @staticmethod
    def _prepare_fence_listeners(cfg: LabConfig) -> None:
        """kvmha-fence-listener on every host, set up by docs/install.md's own commands
        (its ``kvmha-lab=host-init`` step), run on each host before its services start;
        the host's init then starts the listener, as systemd would."""
        from kvmha.tools.lab import guide

        for host in cfg.host_names():
            for argv in guide.commands("host-init", {}):
                r = run(
                    guide.offline_host_argv(cfg.host_dir(host), host, argv),
                    check=False,
                    env=clean_env(),
                    timeout=60,
                )
                if r.returncode != 0:
                    raise KvmhaError(
                        f"{host}: the install guide's {' '.join(argv)!r} failed: "
                        + (r.stderr.strip().splitlines() or ["no output"])[-1],
                        "see docs/install.md",
                    )

    @staticmethod
    def _prepare_host(
        cfg: LabConfig,
        host: str,
        authkey: bytes,
        corosync_conf: str,
        cib: str,
    ) -> None:
        hd = cfg.host_dir(host)
        for d in (
            "etc/corosync",
            "etc/kvmha",
            "etc/pacemaker",
            "var/lib/corosync",
            "var/log/corosync",
            "var/lib/libvirt",
            "var/log/libvirt/qemu",
            "var/cache/libvirt",
            "tmp",
            "run/libvirt",
        ):
            (hd / d).mkdir(parents=True, exist_ok=True)
        (hd / "tmp").chmod(0o1777)
        (hd / "etc/kvmha").chmod(0o750)
        shutil.copytree("/etc/libvirt", hd / "etc/libvirt", symlinks=True, dirs_exist_ok=True)
        (hd / "etc/libvirt/libvirtd.conf").write_text(libvirtconf.libvirtd_conf(cfg, host))
        (hd / "etc/libvirt/qemu.conf").write_text(libvirtconf.qemu_conf(cfg, host))
        if cfg.remote_nodes:
            # Pacemaker Remote's key where Pacemaker looks for it, in the host's private
            # /etc/pacemaker, readable by pacemaker-controld (hacluster:haclient). It was
            # in /etc/kvmha (0750 root): controld could not read it, fell back to the
            # machine's own /etc/pacemaker/authkey, and the guest node's TLS handshake
            # failed ("Key was rejected by service")
            from kvmha.tools.lab.realcluster import remote_key

            pcmk_etc = hd / "etc/pacemaker"
            pcmk_etc.mkdir(parents=True, exist_ok=True)
            shutil.chown(pcmk_etc, "root", "haclient")
            pcmk_etc.chmod(0o750)
            key = pcmk_etc / "authkey"
            key.write_bytes(remote_key(cfg))
            key.chmod(0o640)
            shutil.chown(key, "root", "haclient")
        (hd / "etc/libvirt/qemu-lockd.conf").write_text(libvirtconf.qemu_lockd_conf(cfg))
        (hd / "etc/libvirt/virtlockd.conf").write_text(libvirtconf.virtlockd_conf())
        clusterconf.write_cluster_disk(hd, corosync_conf, authkey, cib)

    # ---- power and network faults -----------------------------------------
    def power_cut(self, host: str) -> None:
        self.cfg.host_index(host)
        if not self.powered(host):
            raise UsageError(
                f"{host} is already powered off", f"'kvmha lab power-on {host}' turns it on"
            )
        power.request(self.cfg.pdu_socket, "off", host, "admin")

    def power_on(self, host: str) -> None:
        self.cfg.host_index(host)
        if self.powered(host):
            raise UsageError(
                f"{host} is already powered on", f"'kvmha lab power-cut {host}' cuts its power"
            )
        power.request(self.cfg.pdu_socket, "on", host, "admin")

    def isolate(self, host: str) -> None:
        self.cfg.host_index(host)
        if not network.cable_connected(self.cfg, host):
            raise UsageError(f"{host} is already isolated", f"'kvmha lab rejoin {host}'")
        network.set_cable(self.cfg, host, False)

    def rejoin(self, host: str) -> None:
        self.cfg.host_index(host)
        if network.cable_connected(self.cfg, host):
            raise UsageError(f"{host} is not isolated", f"'kvmha lab isolate {host}' cuts it off")
        network.set_cable(self.cfg, host, True)

    # ---- status -------------------------------------------------------------
    def power_events(self) -> list[dict[str, Any]]:
        try:
            lines = (self.cfg.pdu_dir / "events.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def status(self) -> dict[str, Any]:
        cfg = self.cfg
        st = self.cluster_state()
        events = self.power_events()
        hosts = []
        for h in cfg.host_names():
            on = self.powered(h)
            node = st.nodes.get(h) if st else None
            if not on:
                last = [e for e in events if e["host"] == h]
                fenced = bool(last) and last[-1]["origin"] == "fence"
                state = "fenced" if fenced else "offline"
            elif node is not None and node.online:
                state = "standby" if node.standby else "online"
            else:
                state = "offline"
            hosts.append(
                {
                    "name": h,
                    "state": state,
                    "address": cfg.host_address(h),
                    "power": "on" if on else "off",
                    "network": "connected" if network.cable_connected(cfg, h) else "isolated",
                }
            )
        guests = []
        for g in cfg.guest_names():
            rs = st.resources.get(g) if st else None
            if rs is None:
                gstate, ghost = "unknown", None
            elif rs.failed:
                gstate, ghost = "failed", (rs.nodes[0] if rs.nodes else None)
            elif rs.active and rs.nodes:
                gstate = "running" if rs.role == "Started" else rs.role.lower()
                ghost = rs.nodes[0]
            else:
                gstate, ghost = "stopped", None
            guests.append(
                {"name": g, "host": ghost, "state": gstate, "address": cfg.guest_address(g)}
            )
        last_fence: dict[str, Any] | None = None
        if st and st.fencing:
            done = sorted(st.fencing, key=lambda e: e.completed)
            e = done[-1]
            last_fence = {
                "target": e.target,
                "action": e.action,
                "status": e.status,
                "delegate": e.delegate,
                "completed": e.completed,
            }
        return {
            "labdir": str(cfg.labdir),
            "agent": AGENTS[cfg.agent],
            "quorate": bool(st and st.quorate),
            "dc": st.dc if st else None,
            "hosts": hosts,
            "guests": guests,
            "last_fence": last_fence,
        }

    # ---- logs ---------------------------------------------------------------
    def log_files(self, host: str) -> list[Path]:
        hd = self.cfg.host_dir(host)
        return [
            hd / "console.log",
            hd / "var/log/corosync/corosync.log",
            hd / "var/log/pacemaker/pacemaker.log",
            hd / "var/log/libvirt/libvirtd.log",
        ]

    def logs(self, host: str, lines: int) -> str:
        self.cfg.host_index(host)
        out = []
        for f in self.log_files(host):
            out.append(f"==> {f} <==")
            try:
                with open(f, "rb") as fh:
                    fh.seek(0, os.SEEK_END)
                    size = fh.tell()
                    fh.seek(max(0, size - 200 * lines))
                    text = fh.read().decode("utf-8", "replace").splitlines()[-lines:]
                out.extend(text)
            except FileNotFoundError:
                out.append("(no such file)")
        return "\n".join(out) + "\n"

    # ---- down ---------------------------------------------------------------
    def down(self, purge: bool = False) -> None:
        """Stop everything of this lab by PID and remove its namespaces.

        Works after a partial up, after kill -9 of any daemon, and when nothing is up.
        """
        if self._cfg is None:
            self.say(f"no lab in {self.labdir}: nothing to do")
            if purge and self.labdir.exists():
                shutil.rmtree(self.labdir)
            return
        cfg = self.cfg
        # the switch first, so that nothing powers a host on again meanwhile
        pid = self.pdu_pid()
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            try:
                self.wait("the power switch to stop", lambda: not pid_alive(pid), 5, 0.05)
            except KvmhaError:
                os.kill(pid, signal.SIGKILL)
        for host in cfg.host_names():
            if network.lab_netns(cfg) or self.powered(host):
                try:
                    power.cut_power(cfg, host)
                except power.PowerError as exc:
                    self.say(str(exc))
        # safety net: whatever still runs in a lab network namespace was started by the lab
        for ns in network.lab_netns(cfg):
            for p in power.netns_pids(ns):
                if pid_alive(p):
                    self.say(f"killing leftover pid {p} in {ns}")
                    signal_pid(p, signal.SIGKILL)
        network.delete(cfg)
        left = network.lab_netns(cfg)
        if left:
            raise KvmhaError(f"could not remove network namespaces {', '.join(left)}")
        for d in ("run",):
            shutil.rmtree(cfg.labdir / d, ignore_errors=True)
        (cfg.pdu_socket).unlink(missing_ok=True)
        if purge:
            shutil.rmtree(cfg.labdir)
        else:
            cfg.file.unlink(missing_ok=True)
        self._cfg = None
        self.say("lab down")
