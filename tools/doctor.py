"""``kvmha doctor``: is this host fit to run highly available guests? Each finding has a fix.

Lives with the tools (the CLI is its only user): an admin's diagnostic, not shared plumbing.

The checks are a declarative table (``CHECKS``): a name (for ``--skip``/``--only``), a
title (for progress) and a function from a ``Context`` to findings. A finding is
``{severity: ok|warning|error, code, message, fix}``; ``code`` is stable, for scripts.
Services are described by a table too (``SERVICES``, ``TIME_SYNC``): their systemd units
and how to recognise their processes where systemd is not the init (see kvmha.tools.systemd).

Where the facts come from: libvirt-python (``qemu:///system``, opened in a thread with a
deadline), systemd over D-Bus or /proc, ``crm_mon --output-as=xml --inactive`` (stonith,
devices, quorum), ``crm_attribute`` (stonith-enabled, where crm_mon does not say), the
file system (key modes) and kvmha.netcfg's checker (bond/bridge verdicts).

Exit codes (``exit_code``): 0 all ok, 1 warnings, 2 errors; ``DOCTOR_FAILED`` (3) is for
the command itself failing (bad option), never for a finding: like ``kvmha net check``.
"""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import os
import re
import socket
import stat
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any, Callable, Optional, Protocol

from kvmha import pcmk, virt
from kvmha.errors import KvmhaError, UsageError
from kvmha.process import trace
from kvmha.tools.systemd import (
    Proc,
    ProcMatch,
    SystemdBus,
    SystemdError,
    find_processes,
    list_processes,
    pid1_name,
    systemd_booted,
)

OK, WARNING, ERROR = "ok", "warning", "error"
SEVERITIES = (OK, WARNING, ERROR)
EXIT_CODES = {OK: 0, WARNING: 1, ERROR: 2}
DOCTOR_FAILED = 3


@dataclasses.dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str
    fix: str = ""
    check: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
            "check": self.check,
        }


# ---- what a check may ask for ---------------------------------------------------------

# The cluster tools (crm_mon, crm_attribute) run through kvmha.pcmk's runner, the one
# place that runs them; a test gives a Context its own runner instead.
Runner = pcmk.Runner
default_runner: Runner = pcmk.subprocess_runner


@dataclasses.dataclass
class Options:
    """Where doctor looks; the defaults are a real host's paths."""

    libvirt_uri: str = "qemu:///system"
    timeout: float = 10.0  # per external call (libvirt, crm_mon, D-Bus)
    bus_address: Optional[str] = None  # a D-Bus address instead of the system bus
    proc: str = "/proc"
    systemd_dir: str = "/run/systemd/system"
    etc_kvmha: str = "/etc/kvmha"
    listener_conf: str = "/etc/kvmha/fence/listener.conf"
    corosync_authkey: str = "/etc/corosync/authkey"
    pacemaker_authkey: str = "/etc/pacemaker/authkey"
    qemu_conf: str = "/etc/libvirt/qemu.conf"
    qemu_lockd_conf: str = "/etc/libvirt/qemu-lockd.conf"


@dataclasses.dataclass(frozen=True)
class ServiceState:
    running: bool
    enabled: Optional[bool]  # None: not known (processes: no boot configuration to read)
    found: bool  # installed (a unit systemd knows), or a process seen
    detail: str  # what was seen: "corosync.service is active (running), enabled"
    paused: bool = False  # a process stopped by SIGSTOP: present but doing nothing


class ServiceSource(Protocol):
    kind: str  # "systemd" or "processes"

    def state(self, svc: Service) -> ServiceState: ...


@dataclasses.dataclass(frozen=True)
class Service:
    """A service doctor wants to see running, as systemd knows it and as /proc shows it."""

    name: str  # shown, and the prefix of its finding codes
    units: tuple[str, ...]  # alternatives (distributions name some units differently)
    procs: tuple[ProcMatch, ...]
    role: str  # what goes wrong without it
    start_fix: str
    enable_fix: str


class SystemdSource:
    kind = "systemd"

    def __init__(self, bus: SystemdBus) -> None:
        self.bus = bus

    def state(self, svc: Service) -> ServiceState:
        states = [self.bus.unit(u) for u in svc.units]
        active = [s for s in states if s.active]
        found = [s for s in states if s.found]
        best = (active or found or states)[0]
        return ServiceState(best.active, best.enabled, best.found, best.describe())


class ProcessSource:
    kind = "processes"

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs

    def state(self, svc: Service) -> ServiceState:
        found = find_processes(svc.procs, self.procs)
        live = [p for p in found if not p.stopped]
        if live:
            pids = ", ".join(f"{p.pid} ({p.comm})" for p in live[:3])
            return ServiceState(True, None, True, f"{svc.name} runs: pid {pids}")
        if found:
            pids = ", ".join(str(p.pid) for p in found[:3])
            return ServiceState(
                False, None, True, f"{svc.name} is stopped (SIGSTOP): pid {pids}", paused=True
            )
        return ServiceState(False, None, False, f"no {svc.name} process in this PID namespace")


class Context:
    """What the checks read, each fetched once; every source can be replaced in tests."""

    def __init__(
        self,
        options: Optional[Options] = None,
        *,
        runner: Optional[Runner] = None,
        services: Optional[ServiceSource] = None,
        libvirt_probe: Optional[Callable[[str], str]] = None,
        net_check: Optional[Callable[[], dict[str, Any]]] = None,
    ) -> None:
        self.options = options or Options()
        self.runner = runner or default_runner
        self._services = services
        self._service_findings: list[Finding] = []
        self.libvirt_probe = libvirt_probe or probe_libvirt
        self.net_check = net_check or run_net_check
        self._crm_mon: Optional[ET.Element] = None
        self._crm_mon_error: Optional[KvmhaError] = None
        self._closers: list[Callable[[], None]] = []

    # services: systemd over D-Bus, or the processes of this PID namespace
    def services(self) -> ServiceSource:
        if self._services is None:
            self._services, self._service_findings = self._pick_services()
        return self._services

    @property
    def services_kind(self) -> Optional[str]:
        """Where services were read from ("systemd", "processes"); None before any check."""
        return self._services.kind if self._services is not None else None

    def service_findings(self) -> list[Finding]:
        self.services()
        return list(self._service_findings)

    def _pick_services(self) -> tuple[ServiceSource, list[Finding]]:
        o = self.options
        if o.bus_address or systemd_booted(o.systemd_dir):
            where = o.bus_address or "the system bus"
            try:
                bus = SystemdBus(o.bus_address, timeout=o.timeout)
            except SystemdError as exc:
                procs = ProcessSource(list_processes(o.proc))
                return procs, [
                    Finding(
                        ERROR,
                        "systemd-unreachable",
                        f"{exc.message}; services were checked as processes instead",
                        exc.fix or "systemctl status dbus",
                    )
                ]
            self._closers.append(bus.close)
            return SystemdSource(bus), [
                Finding(OK, "systemd", f"service states read from systemd over D-Bus ({where})")
            ]
        return ProcessSource(list_processes(o.proc)), [
            Finding(
                WARNING,
                "systemd-absent",
                f"systemd is not the init here (PID 1 is {pid1_name(o.proc)}): services were "
                "checked as processes of this PID namespace; whether they start at boot is "
                "not known",
                "nothing to do in a container or the kvmha lab; a production host boots "
                "with systemd",
            )
        ]

    def crm_mon(self) -> ET.Element:
        """crm_mon's XML status (with inactive resources); KvmhaError when it does not answer."""
        if self._crm_mon is None and self._crm_mon_error is None:
            try:
                self._crm_mon = self._fetch_crm_mon()
            except KvmhaError as exc:
                self._crm_mon_error = exc
        if self._crm_mon_error is not None:
            raise self._crm_mon_error
        assert self._crm_mon is not None
        return self._crm_mon

    def _fetch_crm_mon(self) -> ET.Element:
        argv = ["crm_mon", "-1", "--output-as=xml", "--inactive"]
        r = self.runner(argv, self.options.timeout)
        try:
            root = ET.fromstring(r.stdout) if r.stdout.strip() else None
        except ET.ParseError:
            root = None
        status = root.find("status") if root is not None else None
        if root is None or r.returncode != 0:
            why = status.get("message", "") if status is not None else ""
            why = why or (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise KvmhaError(
                f"the cluster does not answer on this host: crm_mon exit {r.returncode}: {why}",
                "start the cluster on this host: pcs cluster start (systemctl start pacemaker)",
            )
        return root

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()


# ---- libvirt ---------------------------------------------------------------------------


def probe_libvirt(uri: str, timeout: float = 60.0) -> str:
    """Open uri (through kvmha.virt) and describe what answered; raises KvmhaError, or
    TimeoutError when libvirt does not open the connection in time."""
    from kvmha import virt

    trace(f"libvirt: open {uri}, getLibVersion(), numOfDomains()")
    try:
        conn = virt.connect(uri, timeout)
    except virt.LibvirtUnavailable as exc:
        raise KvmhaError("libvirt-python is not installed", "dnf install python3-libvirt") from exc
    except virt.ConnectTimeout as exc:
        raise TimeoutError(str(exc)) from exc
    except Exception as exc:  # libvirt.libvirtError: the module is imported lazily
        raise KvmhaError(f"cannot open {uri}: {virt.err_text(exc)}") from exc
    try:
        v = conn.getLibVersion()
        n = conn.numOfDomains()
    except Exception as exc:
        raise KvmhaError(f"libvirt at {uri} failed: {virt.err_text(exc)}") from exc
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    ver = f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
    return f"libvirt {ver} at {uri} answers, {n} domain(s) running"


LIBVIRT_FIX = (
    "start libvirt: systemctl enable --now libvirtd (or virtqemud.socket on modular "
    "libvirt); systemctl status libvirtd says why it is down"
)


def check_libvirt(ctx: Context) -> list[Finding]:
    uri = ctx.options.libvirt_uri
    try:
        what = virt.call_with_deadline(lambda: ctx.libvirt_probe(uri), ctx.options.timeout)
    except TimeoutError:
        return [
            Finding(
                ERROR,
                "libvirt-timeout",
                f"libvirt at {uri} does not answer within {ctx.options.timeout:g} s: the "
                "daemon hangs or is stopped",
                "look at the daemon (systemctl status libvirtd; journalctl -u libvirtd); "
                "restart it: systemctl restart libvirtd",
            )
        ]
    except KvmhaError as exc:
        return [Finding(ERROR, "libvirt-unreachable", exc.message, exc.fix or LIBVIRT_FIX)]
    return [Finding(OK, "libvirt", what)]


# ---- services ------------------------------------------------------------------------

SERVICES = (
    Service(
        "corosync",
        ("corosync.service",),
        (ProcMatch(comm="corosync"),),
        "this host is not a cluster member",
        "pcs cluster start (or systemctl start corosync pacemaker)",
        "pcs cluster enable (or systemctl enable corosync pacemaker)",
    ),
    Service(
        "pacemaker",
        ("pacemaker.service",),
        (ProcMatch(comm="pacemakerd"),),
        "no guest is started, monitored or moved by this host",
        "pcs cluster start (or systemctl start pacemaker)",
        "pcs cluster enable (or systemctl enable pacemaker)",
    ),
)

FENCE_LISTENER = Service(
    "kvmha-fence-listener",
    ("kvmha-fence-listener.service",),
    (
        ProcMatch(comm="kvmha-fence-lis"),
        ProcMatch(arg="kvmha-fence-listener"),
        ProcMatch(arg="kvmha.fence.listener"),
    ),
    "clusters inside guests cannot fence their members through this host",
    "systemctl start kvmha-fence-listener (journalctl -u kvmha-fence-listener says why "
    "it stopped)",
    "systemctl enable kvmha-fence-listener",
)

TIME_SYNC = (
    Service(
        "chronyd",
        ("chronyd.service", "chrony.service"),
        (ProcMatch(comm="chronyd"),),
        "",
        "",
        "",
    ),
    Service(
        "ntpd",
        ("ntpd.service", "ntp.service", "ntpsec.service"),
        (ProcMatch(comm="ntpd"),),
        "",
        "",
        "",
    ),
    Service(
        "systemd-timesyncd",
        ("systemd-timesyncd.service",),
        (ProcMatch(comm="systemd-timesyn"),),
        "",
        "",
        "",
    ),
)
TIME_SYNC_FIX = "install and enable chrony: dnf install chrony && systemctl enable --now chronyd"


def service_findings(svc: Service, st: ServiceState) -> list[Finding]:
    if st.paused:
        return [
            Finding(
                ERROR,
                f"{svc.name}-stopped",
                f"{st.detail}: {svc.role}",
                f"resume it (kill -CONT PID) or restart it: {svc.start_fix}",
            )
        ]
    if not st.running:
        return [Finding(ERROR, f"{svc.name}-stopped", f"{st.detail}: {svc.role}", svc.start_fix)]
    if st.enabled is False:
        return [
            Finding(
                WARNING,
                f"{svc.name}-not-enabled",
                f"{st.detail}: it does not start at boot, so after a reboot {svc.role}",
                svc.enable_fix,
            )
        ]
    return [Finding(OK, svc.name, st.detail)]


def listener_configured(path: str) -> tuple[bool, str]:
    """(configured, why not): like the listener itself, which exits 6 ("not configured")
    without its configuration file or the hosts' key it names."""
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        with open(path, encoding="utf-8") as f:
            cp.read_file(f)
    except FileNotFoundError:
        return False, f"{path} does not exist"
    except (OSError, configparser.Error) as exc:
        return True, f"{path} cannot be read: {exc}"  # meant to be configured, but broken
    default_key = os.path.join(os.path.dirname(path), "hosts.key")
    host_key = cp.get("listener", "host_key", fallback="").strip() or default_key
    if not os.path.exists(host_key):
        return False, f"the hosts' key {host_key} does not exist"
    return True, ""


def check_services(ctx: Context) -> list[Finding]:
    findings = ctx.service_findings()
    src = ctx.services()
    for svc in SERVICES:
        findings += _service(src, svc)
    configured, why = listener_configured(ctx.options.listener_conf)
    if not configured:
        findings.append(
            Finding(
                WARNING,
                "kvmha-fence-listener-unconfigured",
                f"the fence listener is not configured ({why}): {FENCE_LISTENER.role}",
                f"configure {ctx.options.listener_conf} and the hosts' key, then "
                "systemctl enable --now kvmha-fence-listener (see fence.md)",
            )
        )
    else:
        findings += _service(src, FENCE_LISTENER)
        if why:
            findings.append(
                Finding(ERROR, "kvmha-fence-listener-config", why, "fix the file, see fence.md")
            )
    return findings


def _service(src: ServiceSource, svc: Service) -> list[Finding]:
    try:
        st = src.state(svc)
    except SystemdError as exc:
        return [Finding(ERROR, f"{svc.name}-unknown", exc.message, exc.fix or "")]
    if not st.found and src.kind == "systemd":
        return [
            Finding(
                ERROR,
                f"{svc.name}-missing",
                f"{st.detail}: {svc.role}",
                f"install it (dnf install {svc.name}), then {svc.enable_fix}",
            )
        ]
    return service_findings(svc, st)


def check_time_sync(ctx: Context) -> list[Finding]:
    src = ctx.services()
    states: list[ServiceState] = []
    for svc in TIME_SYNC:
        try:
            states.append(src.state(svc))
        except SystemdError as exc:
            return [Finding(ERROR, "timesync-unknown", exc.message, exc.fix or "")]
    running = [s for s in states if s.running]
    if not running:
        return [
            Finding(
                WARNING,
                "timesync-missing",
                "no time sync service runs (chronyd, ntpd or systemd-timesyncd): the hosts' "
                "clocks drift apart, and so do their logs and fencing timelines",
                TIME_SYNC_FIX,
            )
        ]
    st = running[0]
    if st.enabled is False:
        return [
            Finding(
                WARNING,
                "timesync-not-enabled",
                f"{st.detail}: it does not start at boot",
                "systemctl enable chronyd (or the service that runs)",
            )
        ]
    return [Finding(OK, "timesync", st.detail)]


# ---- the cluster: stonith and quorum ---------------------------------------------------


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("true", "yes", "y", "on", "1")


def stonith_enabled(ctx: Context, root: ET.Element) -> bool:
    opts = root.find("summary/cluster_options")
    if opts is not None and opts.get("stonith-enabled") is not None:
        return _truthy(opts.get("stonith-enabled", ""))
    # older crm_mon: ask the CIB; unset means Pacemaker's default, true
    r = ctx.runner(
        [
            "crm_attribute",
            "--type",
            "crm_config",
            "--name",
            "stonith-enabled",
            "--query",
            "--quiet",
        ],
        ctx.options.timeout,
    )
    return r.returncode != 0 or not r.stdout.strip() or _truthy(r.stdout)


def check_cluster(ctx: Context) -> list[Finding]:
    try:
        root = ctx.crm_mon()
    except KvmhaError as exc:
        return [Finding(ERROR, "cluster-unreachable", exc.message, exc.fix or "")]
    return stonith_findings(ctx, root) + quorum_findings(root)


def stonith_findings(ctx: Context, root: ET.Element) -> list[Finding]:
    findings = []
    if not stonith_enabled(ctx, root):
        findings.append(
            Finding(
                ERROR,
                "stonith-disabled",
                "stonith-enabled is false: a failed host is never fenced, so its guests "
                "are not recovered safely (or run twice)",
                "pcs property set stonith-enabled=true",
            )
        )
    devices = [
        r for r in root.iter("resource") if r.get("resource_agent", "").startswith("stonith:")
    ]
    if not devices:
        findings.append(
            Finding(
                ERROR,
                "stonith-no-device",
                "no stonith device is configured: the cluster cannot fence a failed host",
                "configure one for your power switch or BMC, e.g. pcs stonith create ipmi-hostN "
                "fence_ipmilan ip=... username=... password=... pcmk_host_list=hostN",
            )
        )
    else:
        active = [d for d in devices if d.get("active") == "true"]
        names = ", ".join(sorted({d.get("id", "?") for d in devices}))
        if not active:
            findings.append(
                Finding(
                    ERROR,
                    "stonith-device-stopped",
                    f"no stonith device is running ({names})",
                    "pcs stonith status; pcs resource cleanup "
                    f"{devices[0].get('id', 'DEVICE')} (pcs stonith enable if disabled)",
                )
            )
        elif not findings:
            findings.append(
                Finding(
                    OK,
                    "stonith",
                    f"stonith enabled, {len(active)} of {len(devices)} device(s) running "
                    f"({names})",
                )
            )
    return findings


def quorum_findings(root: ET.Element) -> list[Finding]:
    dc = root.find("summary/current_dc")
    nodes = root.findall("nodes/node")
    online = sum(1 for n in nodes if n.get("online") == "true")
    seen = f"{online} of {len(nodes)} node(s) online"
    if dc is None or dc.get("present") != "true":
        return [
            Finding(
                ERROR,
                "quorum-no-controller",
                f"the cluster has no designated controller ({seen}): nothing is managed",
                "corosync-cfgtool -s and corosync-quorumtool -s show which hosts this one "
                "sees; check the cluster network",
            )
        ]
    if dc.get("with_quorum") != "true":
        return [
            Finding(
                ERROR,
                "quorum-lost",
                f"the cluster partition of this host has no quorum ({seen}): guests are "
                "stopped here (no-quorum-policy)",
                "bring the other hosts back or repair the cluster network "
                "(corosync-quorumtool -s)",
            )
        ]
    return [Finding(OK, "quorum", f"quorate, designated controller {dc.get('name', '?')}, {seen}")]


# ---- key files ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModeRule:
    """How open a path may be: ``allowed`` permission bits; group bits only for ``groups``."""

    what: str  # "key", "directory", "keys directory", "file"
    allowed: int
    severity: str
    fix_mode: int
    groups: tuple[str, ...] = ()  # group read allowed only when the file's group is one of these
    fix_extra: str = ""


KEY = ModeRule("key file", 0o600, ERROR, 0o600)
KEYS_DIR = ModeRule("key directory", 0o700, ERROR, 0o700)
CONF_DIR = ModeRule("directory", 0o750, WARNING, 0o750)
CONF_FILE = ModeRule("file", 0o640, WARNING, 0o640)
COROSYNC_KEY = ModeRule("corosync key", 0o600, ERROR, 0o400)
# Pacemaker's docs: /etc/pacemaker/authkey hacluster:haclient 0640 (its daemons read it)
PACEMAKER_KEY = ModeRule(
    "pacemaker key", 0o640, ERROR, 0o640, ("haclient",), "chown hacluster:haclient {path} && "
)


def _is_key(rel_parts: tuple[str, ...]) -> bool:
    name = rel_parts[-1]
    return name.endswith(".key") or name == "authkey" or "keys" in rel_parts[:-1]


def _group_name(gid: int) -> str:
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (KeyError, ImportError):
        return str(gid)


def mode_finding(path: str, st: os.stat_result, rule: ModeRule) -> Optional[Finding]:
    mode = stat.S_IMODE(st.st_mode)
    allowed = rule.allowed
    if rule.groups and _group_name(st.st_gid) not in rule.groups:
        allowed &= ~0o070
    extra = mode & ~allowed & 0o777
    if not extra and st.st_uid == 0:
        return None
    code = "key-mode" if rule.severity == ERROR else "file-mode"
    if extra:
        who = (
            " and ".join(w for w, bits in (("group", 0o070), ("others", 0o007)) if extra & bits)
            or "its owner"
        )
        fix = f"{rule.fix_extra.format(path=path)}chmod {rule.fix_mode:04o} {path}"
        return Finding(
            rule.severity,
            code,
            f"{rule.what} {path} has mode {mode:04o}: {who} may access it "
            f"(at most {rule.allowed:04o})",
            fix,
        )
    if rule.severity == ERROR and not rule.groups:
        return Finding(
            ERROR,
            "key-owner",
            f"{rule.what} {path} is owned by uid {st.st_uid}, not root",
            f"chown root:root {path}",
        )
    return None


def check_keys(ctx: Context) -> list[Finding]:
    o = ctx.options
    findings: list[Finding] = []
    counted = 0
    if not os.path.isdir(o.etc_kvmha):
        findings.append(
            Finding(
                WARNING,
                "etc-kvmha-missing",
                f"{o.etc_kvmha} does not exist: kvmha is not installed, or was removed",
                f"reinstall kvmha (dnf reinstall kvmha), or: install -d -m 0750 {o.etc_kvmha}",
            )
        )
    else:
        for dirpath, dirnames, filenames in os.walk(o.etc_kvmha):
            dirnames.sort()
            rel = os.path.relpath(dirpath, o.etc_kvmha)
            parts = () if rel == "." else tuple(rel.split(os.sep))
            rule = KEYS_DIR if parts and parts[-1] == "keys" else CONF_DIR
            counted += 1
            f = _stat_finding(dirpath, rule, follow=False)
            if f:
                findings.append(f)
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                counted += 1
                f = _stat_finding(path, KEY if _is_key((*parts, name)) else CONF_FILE, True)
                if f:
                    findings.append(f)
    for path, rule in ((o.corosync_authkey, COROSYNC_KEY), (o.pacemaker_authkey, PACEMAKER_KEY)):
        if os.path.exists(path):
            counted += 1
            f = _stat_finding(path, rule, True)
            if f:
                findings.append(f)
    if not findings:
        findings.append(
            Finding(OK, "key-modes", f"{counted} key and configuration path(s): modes are tight")
        )
    return findings


def _stat_finding(path: str, rule: ModeRule, follow: bool) -> Optional[Finding]:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError as exc:
        return Finding(WARNING, "file-unreadable", f"cannot stat {path}: {exc.strerror}", "")
    if follow and not stat.S_ISREG(st.st_mode):
        return None
    return mode_finding(path, st, rule)


# ---- network ---------------------------------------------------------------------------------


def run_net_check() -> dict[str, Any]:
    """``kvmha net check`` of this host, through kvmha.netcfg's library."""
    from kvmha.netcfg.check import check

    report: dict[str, Any] = check(None)
    return report


NET_FIX = "run 'kvmha net check' for every reason and its reference (docs/net.md)"


def check_network(ctx: Context) -> list[Finding]:
    try:
        report = ctx.net_check()
        bridges = report["bridges"]
    except Exception as exc:  # the network checker must never take doctor down
        msg = exc.message if isinstance(exc, KvmhaError) else f"{type(exc).__name__}: {exc}"
        return [
            Finding(
                WARNING,
                "net-unavailable",
                f"network check unavailable: {msg}",
                "run 'kvmha net check' by hand; it needs python3-pyroute2",
            )
        ]
    if not bridges:
        return [Finding(OK, "net-no-bridges", "no bridges on this host: no bond/bridge to check")]
    sev = {"ok": OK, "warning": WARNING, "incompatible": ERROR}
    findings = []
    for b in bridges:
        verdict = str(b.get("verdict", "warning"))
        problems = [f for f in b.get("findings", []) if f.get("severity") not in ("info", "ok")]
        if verdict == "ok" or not problems:
            findings.append(Finding(OK, "net-ok", f"bridge {b['name']}: ok"))
            continue
        first = problems[0]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        findings.append(
            Finding(
                sev.get(verdict, WARNING),
                f"net-{verdict}",
                f"bridge {b['name']}: {verdict}: {first.get('message', '')}{more}",
                NET_FIX,
            )
        )
    return findings


# ---- disk leases ------------------------------------------------------------------------

LOCK_FIX = (
    'set lock_manager = "lockd" in /etc/libvirt/qemu.conf (leases in file_lockspace_dir on '
    "the shared storage, /etc/libvirt/qemu-lockd.conf), systemctl enable --now "
    "virtlockd.socket, then restart libvirtd (docs/install.md, section 4)"
)
LOCK_DAEMONS = {
    "lockd": Service(
        "virtlockd",
        ("virtlockd.socket", "virtlockd.service"),
        (ProcMatch(comm="virtlockd"),),
        "libvirt cannot take disk leases, so it refuses to start guests here",
        "systemctl start virtlockd.socket",
        "systemctl enable virtlockd.socket",
    ),
    "sanlock": Service(
        "sanlock",
        ("sanlock.service",),
        (ProcMatch(comm="sanlock"),),
        "libvirt cannot take disk leases, so it refuses to start guests here",
        "systemctl start sanlock",
        "systemctl enable sanlock",
    ),
}
_CONF_LINE = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:"([^"]*)"|(\S+))')


def read_libvirt_conf(path: str) -> dict[str, str]:
    """key = "value" and key = number lines of a libvirt configuration file (comments and
    lists ignored: the lock settings are plain values). OSError when it cannot be read."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = None if line.lstrip().startswith("#") else _CONF_LINE.match(line)
            if m:
                out[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
    return out


def check_locks(ctx: Context) -> list[Finding]:
    """libvirt's disk leases: the one protection against a second start of a guest on
    another host that is atomic (the agent's double-start guard checks, then creates)."""
    path = ctx.options.qemu_conf
    try:
        conf = read_libvirt_conf(path)
    except FileNotFoundError:
        return [
            Finding(
                WARNING,
                "lock-manager-unknown",
                f"{path} does not exist: is libvirt installed?",
                LOCK_FIX,
            )
        ]
    except OSError as exc:
        return [Finding(ERROR, "lock-manager-unreadable", f"cannot read {path}: {exc}", LOCK_FIX)]
    manager = conf.get("lock_manager", "")
    if not manager:
        return [
            Finding(
                WARNING,
                "lock-manager-off",
                f"libvirt takes no disk leases (no lock_manager in {path}): a second start "
                "of a guest on another host is not refused by libvirt; only fencing and the "
                "agent's double-start guard (not atomic) stand against a double run",
                LOCK_FIX,
            )
        ]
    daemon = LOCK_DAEMONS.get(manager)
    if daemon is None:
        return [
            Finding(
                ERROR,
                "lock-manager-unknown",
                f"lock_manager = {manager!r} in {path} is not a lock manager libvirt ships "
                "(lockd or sanlock): libvirtd refuses to start guests",
                LOCK_FIX,
            )
        ]
    findings: list[Finding] = []
    if manager == "lockd":
        try:
            lockd = read_libvirt_conf(ctx.options.qemu_lockd_conf)
        except FileNotFoundError:
            lockd = {}
        except OSError as exc:
            lockd = {}
            findings.append(
                Finding(
                    ERROR,
                    "lockd-conf-unreadable",
                    f"cannot read {ctx.options.qemu_lockd_conf}: {exc}",
                    LOCK_FIX,
                )
            )
        space = lockd.get("file_lockspace_dir", "")
        if lockd.get("auto_disk_leases", "1") == "0":
            findings.append(
                Finding(
                    WARNING,
                    "lockd-no-auto-leases",
                    f"auto_disk_leases = 0 in {ctx.options.qemu_lockd_conf}: disks get no "
                    "lease unless the domain XML declares one",
                    f"remove auto_disk_leases from {ctx.options.qemu_lockd_conf}",
                )
            )
        elif space and not os.path.isdir(space):
            findings.append(
                Finding(
                    ERROR,
                    "lockspace-missing",
                    f"file_lockspace_dir {space} is not a directory: libvirtd cannot take "
                    "leases, so it refuses to start guests",
                    f"mount the shared storage, or mkdir -p {space} on it",
                )
            )
        else:
            where = (
                f"in the lockspace {space}"
                if space
                else "as fcntl locks on the disk files (the shared file system must honour "
                "them across hosts)"
            )
            findings.append(Finding(OK, "lock-manager", f"lock_manager = lockd: leases {where}"))
    else:
        findings.append(Finding(OK, "lock-manager", f"lock_manager = {manager}"))
    return findings + _service(ctx.services(), daemon)


# ---- the table, and running it -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    title: str
    run: Callable[[Context], list[Finding]]


CHECKS = (
    Check("libvirt", "libvirt reachable", check_libvirt),
    Check("services", "corosync, pacemaker, fence listener", check_services),
    Check("cluster", "stonith and quorum", check_cluster),
    Check("timesync", "time sync service", check_time_sync),
    Check("keys", "key file modes", check_keys),
    Check("locks", "libvirt's disk leases", check_locks),
    Check("network", "bonds under bridges (kvmha net check)", check_network),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)


def select_checks(skip: Sequence[str] = (), only: Sequence[str] = ()) -> list[Check]:
    for name in (*skip, *only):
        if name not in CHECK_NAMES:
            raise UsageError(f"unknown check {name!r}", f"choose from {', '.join(CHECK_NAMES)}")
    if skip and only:
        raise UsageError("--skip and --only exclude each other", "give one of them")
    return [c for c in CHECKS if c.name not in skip and (not only or c.name in only)]


def run_checks(
    ctx: Context,
    checks: Sequence[Check] = CHECKS,
    progress: Callable[[str], None] = lambda _m: None,
) -> list[Finding]:
    """Every check's findings, in table order; a check that breaks is an error finding."""
    findings: list[Finding] = []
    try:
        for c in checks:
            progress(c.title)
            try:
                got = c.run(ctx)
            except KvmhaError as exc:
                got = [Finding(ERROR, f"{c.name}-failed", exc.message, exc.fix or "")]
            except Exception as exc:  # one broken check must not hide the others
                got = [
                    Finding(
                        ERROR,
                        f"{c.name}-failed",
                        f"the {c.name} check failed: {type(exc).__name__}: {exc}",
                        "report this as a kvmha bug, with the output of kvmha doctor --json",
                    )
                ]
            findings += [dataclasses.replace(f, check=c.name) for f in got]
    finally:
        ctx.close()
    return findings


def summary(findings: Sequence[Finding]) -> dict[str, int]:
    return {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}


def exit_code(findings: Sequence[Finding]) -> int:
    return max((EXIT_CODES[f.severity] for f in findings), default=0)


def report_exit_code(doc: dict[str, Any]) -> int:
    """The exit code of a report: 2 any error, 1 any warning, else 0."""
    return max((EXIT_CODES[s] for s, n in doc["summary"].items() if n), default=0)


def report(
    ctx: Context,
    checks: Sequence[Check] = CHECKS,
    progress: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """The JSON document of ``kvmha doctor --json``."""
    t0 = time.monotonic()
    findings = run_checks(ctx, checks, progress)
    return {
        "schema": "kvmha.doctor.v1",
        "host": socket.gethostname(),
        "services_from": ctx.services_kind,
        "findings": [f.to_dict() for f in findings],
        "summary": summary(findings),
        "elapsed_s": round(time.monotonic() - t0, 3),
    }
