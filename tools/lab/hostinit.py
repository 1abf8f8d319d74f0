"""A lab host: boot it into its namespaces, and be its PID 1.

``boot`` (run from the machine) enters the host's network namespace, unshares mount,
UTS, IPC and PID namespaces, and forks the host's init; it prints the init's PID as
the machine sees it and exits. The power switch keeps that PID: SIGKILL of the init is
a power cut (the kernel kills every process of the PID namespace, QEMU included).

``init`` runs as PID 1 inside: private directories bound over the daemons' state and
configuration, fresh /run, /dev/shm, /proc and /sys, the host name, then virtlogd,
libvirtd, corosync and pacemakerd with a clean environment, as systemd would start
them. As PID 1 it reaps every orphan at once (QEMU is double-forked by libvirtd; a
slow reaper makes every destroy take seconds). SIGTERM stops the host gracefully.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvmha.process import clean_env, module_argv, signal_pid
from kvmha.tools.lab.config import LabConfig

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# host directory -> mount point inside the host
BIND_MOUNTS = (
    ("etc/corosync", "/etc/corosync"),
    ("etc/libvirt", "/etc/libvirt"),
    ("etc/kvmha", "/etc/kvmha"),
    # Pacemaker Remote's authkey at its default place, per host: the machine's own
    # /etc/pacemaker/authkey (Debian's pacemaker package makes one) is not the lab's
    ("etc/pacemaker", "/etc/pacemaker"),
    ("var/lib/pacemaker", "/var/lib/pacemaker"),
    ("var/lib/corosync", "/var/lib/corosync"),
    ("var/lib/libvirt", "/var/lib/libvirt"),
    ("var/log/pacemaker", "/var/log/pacemaker"),
    ("var/log/corosync", "/var/log/corosync"),
    ("var/log/libvirt", "/var/log/libvirt"),
    ("var/cache/libvirt", "/var/cache/libvirt"),
    ("tmp", "/tmp"),  # noqa: S108 (a mount point)
    ("var/log/kvmha", "/var/log/kvmha"),
    ("var/lib/kvmha", "/var/lib/kvmha"),
)
# Roles: a lab host runs the whole stack; a guest-cluster node (the fence tests' second
# cluster, in a namespace of its own on the lab switch) only corosync and pacemaker.
ROLE_HOST = "host"
ROLE_GUEST_CLUSTER = "guest-cluster"
FENCE_LISTENER_CONF = "/etc/kvmha/fence/listener.conf"
DAEMONS_FILE = "/run/kvmha-lab-daemons.json"
# Like their systemd units (Restart=on-failure): libvirtd and virtlogd come back after a
# crash; corosync does not, and pacemakerd is left alone (its children outlive it).
RESTART_DELAY = {"libvirtd": 1.0, "virtlogd": 1.0, "virtlockd": 1.0, "fence-listener": 1.0}


def node_paths(cfg: LabConfig, node: str, role: str) -> tuple[str, Path, Path]:
    """(network namespace, private directory, /etc/hosts file) of a host or node."""
    if role == ROLE_GUEST_CLUSTER:
        return cfg.gc_netns(node), cfg.gc_node_dir(node), cfg.gc_dir / "hosts.txt"
    return cfg.host_netns(node), cfg.host_dir(node), cfg.labdir / "hosts.txt"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def boot(labdir: Path, host: str, role: str = ROLE_HOST) -> int:
    """Start host's init in fresh namespaces; return its PID (as seen from the machine)."""
    cfg = LabConfig.load(labdir)
    if cfg is None:
        raise SystemExit(f"no lab in {labdir}")
    netns, hdir, _ = node_paths(cfg, host, role)
    libc = _libc()
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _check(libc.setns(fd, CLONE_NEWNET), "setns(net)")
    finally:
        os.close(fd)
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID), "unshare")
    console = hdir / "console.log"
    pid = os.fork()
    if pid == 0:  # PID 1 of the new PID namespace
        try:
            os.setsid()
            out = os.open(str(console), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            extra = [role] if role != ROLE_HOST else []
            argv = module_argv("kvmha.tools.lab.hostinit", "init", str(labdir), host, *extra)
            os.execv(argv[0], argv)  # noqa: S606 (no shell: our own init)
        finally:
            os._exit(127)
    return pid


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, timeout=60)


def _unblock_sigchld() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def _log(msg: str) -> None:
    print(f"{time.strftime('%F %T')} init: {msg}", flush=True)


class HostInit:
    def __init__(self, cfg: LabConfig, host: str, role: str = ROLE_HOST) -> None:
        self.cfg = cfg
        self.host = host
        self.role = role
        _, self.hdir, self.hosts_file = node_paths(cfg, host, role)
        self.daemons: dict[str, int] = {}
        self.commands: dict[str, tuple[list[str], str, dict[str, str] | None]] = {}
        self.restart_at: dict[str, float] = {}
        self.stopping = False

    def mounts(self) -> None:
        _sh("mount", "--make-rprivate", "/")
        _sh("mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", "/proc")
        # a sysfs of this network namespace (shows its links, like 'ip netns exec')
        _sh("umount", "-l", "/sys")
        _sh("mount", "-t", "sysfs", "sysfs", "/sys")
        for src, dst in BIND_MOUNTS:
            Path(dst).mkdir(parents=True, exist_ok=True)
            (self.hdir / src).mkdir(parents=True, exist_ok=True)  # a lab made before it existed
            _sh("mount", "--bind", str(self.hdir / src), dst)
        _sh("mount", "--bind", str(self.hosts_file), "/etc/hosts")
        _sh("mount", "-t", "tmpfs", "-o", "mode=0755,size=64m", "tmpfs", "/run")
        for d in ("lock", "resource-agents", "crm", "libvirt", "corosync-qdevice"):
            Path("/run", d).mkdir(exist_ok=True)
        shutil.chown("/run/crm", "hacluster", "haclient")
        # /run/libvirt is reachable from the machine too (libvirt-sock for tests and tools)
        runlv = self.hdir / "run" / "libvirt"
        if runlv.exists():
            shutil.rmtree(runlv)
        runlv.mkdir(parents=True)
        _sh("mount", "--bind", str(runlv), "/run/libvirt")
        _sh("mount", "-t", "tmpfs", "-o", "mode=1777,size=256m", "tmpfs", "/dev/shm")  # noqa: S108
        _sh("hostname", self.host)

    def start(self, name: str, argv: list[str], log: str, env: dict[str, str] | None = None) -> int:
        self.commands[name] = (argv, log, env)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(env),
                start_new_session=True,
                # the init blocks SIGCHLD to wait for it; a daemon must not inherit that
                preexec_fn=_unblock_sigchld,
            )
        self.daemons[name] = proc.pid
        Path(DAEMONS_FILE).write_text(json.dumps(self.daemons))
        _log(f"started {name} pid {proc.pid}")
        return proc.pid

    def wait_for(self, argv: list[str], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            r = subprocess.run(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=clean_env(),
                check=False,
            )
            if r.returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def start_stack(self) -> None:
        if self.role == ROLE_GUEST_CLUSTER:
            self.start_cluster_only()
            return
        Path("/var/log/libvirt/qemu").mkdir(parents=True, exist_ok=True)
        # systemd's socket units exist before libvirtd starts; here each daemon's socket
        # is waited for: libvirtd whose QEMU driver finds no virtlockd socket (qemu.conf
        # lock_manager = "lockd") exits at once ("Driver state initialization failed")
        self.start("virtlogd", ["/usr/sbin/virtlogd"], "/var/log/libvirt/virtlogd.out")
        self.start("virtlockd", ["/usr/sbin/virtlockd"], "/var/log/libvirt/virtlockd.out")
        for sock in ("/run/libvirt/virtlogd-sock", "/run/libvirt/virtlockd-sock"):
            if not _wait_path(sock, 10):
                _log(f"{sock} missing after 10 s")
        libvirtd = ["/usr/sbin/libvirtd", "--listen", "--pid-file", "/run/libvirt/libvirtd.pid"]
        self.start("libvirtd", libvirtd, "/var/log/libvirt/libvirtd.out")
        self.start("corosync", ["/usr/sbin/corosync", "-f"], "/var/log/corosync/corosync.out")
        if not self.wait_for(["corosync-cfgtool", "-s"], 10):
            _log("corosync does not answer after 10 s")
        # pacemaker after libvirtd (the drop-in kvmha ships orders pacemaker.service after
        # it): its first probes and starts ask libvirt about the guests
        self.wait_libvirtd(30)
        self.start(
            "pacemakerd",
            ["/usr/sbin/pacemakerd"],
            "/var/log/pacemaker/pacemakerd.out",
            {
                "PCMK_logfacility": "none",
                "PCMK_logfile": "/var/log/pacemaker/pacemaker.log",
            },
        )
        if Path(FENCE_LISTENER_CONF).exists():
            # as systemd would start kvmha-fence-listener.service
            self.start(
                "fence-listener",
                module_argv("kvmha.fence.listener", "--config", FENCE_LISTENER_CONF),
                "/var/log/kvmha/fence-listener.out",
            )

    def start_cluster_only(self) -> None:
        """A guest-cluster node: corosync and pacemaker, no libvirt."""
        self.start("corosync", ["/usr/sbin/corosync", "-f"], "/var/log/corosync/corosync.out")
        if not self.wait_for(["corosync-cfgtool", "-s"], 10):
            _log("corosync does not answer after 10 s")
        self.start(
            "pacemakerd",
            ["/usr/sbin/pacemakerd"],
            "/var/log/pacemaker/pacemakerd.out",
            {"PCMK_logfacility": "none", "PCMK_logfile": "/var/log/pacemaker/pacemaker.log"},
        )

    def wait_libvirtd(self, seconds: float) -> None:
        """Until libvirtd answers; one that exits meanwhile is started again at once (the
        init's reaping loop does not run yet), as systemd would restart it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.wait_for(["virsh", "-c", "qemu:///system", "uri"], 1):
                return
            pid = self.daemons.get("libvirtd")
            if pid is None or self._reap_all(pid):
                self.restart_at.pop("libvirtd", None)
                self._restart("libvirtd")
        _log(f"libvirtd does not answer after {seconds:.0f} s")

    def _stop(self, name: str, seconds: float) -> None:
        pid = self.daemons.get(name)
        if pid is None:
            return
        if not signal_pid(pid, signal.SIGTERM):
            return
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._reap_all(pid):
                return
            time.sleep(0.05)
        _log(f"{name} did not stop in {seconds:.0f} s: killing it")
        signal_pid(pid, signal.SIGKILL)

    def _reap_all(self, watch: int | None = None) -> bool:
        """Reap every exited child; True if watch was among them."""
        seen = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True if watch is not None else seen
            if pid == 0:
                return seen
            if pid == watch:
                seen = True
            self._note_exit(pid, status)

    def _note_exit(self, pid: int, status: int) -> None:
        for name, dpid in list(self.daemons.items()):
            if dpid == pid:
                _log(f"{name} (pid {pid}) exited with status {status}")
                del self.daemons[name]
                if name in RESTART_DELAY and not self.stopping:
                    self.restart_at[name] = time.monotonic() + RESTART_DELAY[name]

    def _restart_due(self) -> None:
        now = time.monotonic()
        for name, when in list(self.restart_at.items()):
            if when <= now:
                del self.restart_at[name]
                self._restart(name)

    def _restart(self, name: str) -> None:
        """Start a daemon again with the command it was first started with."""
        argv, log, env = self.commands[name]
        if name == "libvirtd":  # a killed libvirtd leaves its pid file behind
            Path("/run/libvirt/libvirtd.pid").unlink(missing_ok=True)
        self.start(name, argv, log, env)

    def shutdown(self, *_: object) -> None:
        """Graceful power-off: the cluster stack first (it stops or moves guests)."""
        if self.stopping:
            return
        self.stopping = True
        _log("graceful shutdown")
        self._stop("fence-listener", 5)
        self._stop("pacemakerd", 120)
        self._stop("corosync", 30)
        self._stop("libvirtd", 15)
        self._stop("virtlockd", 5)
        self._stop("virtlogd", 5)
        _log("halted")
        os._exit(0)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.shutdown)
        signal.signal(signal.SIGINT, self.shutdown)
        _log(f"booting {self.host}")
        self.mounts()
        self.start_stack()
        _log("up")
        # SIGCHLD is blocked and waited for: orphans (QEMU) are reaped at once, and the
        # timeout lets crashed daemons be restarted on time
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        while True:
            signal.sigtimedwait({signal.SIGCHLD}, 0.5)
            self._reap_all()
            self._restart_due()


def _wait_path(path: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def main(argv: list[str]) -> None:
    role = argv[3] if len(argv) == 4 else ROLE_HOST
    if role not in (ROLE_HOST, ROLE_GUEST_CLUSTER):
        raise SystemExit(f"unknown role {role!r}")
    if len(argv) in (3, 4) and argv[0] == "boot":
        print(boot(Path(argv[1]), argv[2], role), flush=True)
        return
    if len(argv) in (3, 4) and argv[0] == "init":
        cfg = LabConfig.load(Path(argv[1]))
        if cfg is None:
            raise SystemExit(f"no lab in {argv[1]}")
        HostInit(cfg, argv[2], role).run()
        return
    raise SystemExit("usage: hostinit boot|init LABDIR HOST [host|guest-cluster]")


if __name__ == "__main__":
    main(sys.argv[1:])
