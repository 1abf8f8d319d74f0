"""ocf:kvmha:Guest: the actions.  See docs/agent.md for the user documentation.

Run as ``Guest ACTION`` by pacemaker-execd with OCF_RESKEY_* in the environment.  The
monitor path imports only ocf, guest_params, virt, statefile and libvirt; everything else
(XML parsing, subprocess, health checks, migration) is imported on the paths that need it.
"""

from __future__ import annotations

import os
import sys
import time

from kvmha import virt
from kvmha.endpoint import split_host_port
from kvmha.virt import (
    CRASHED,
    PAUSED,
    PMSUSPENDED,
    SHUTOFF,
    STATE_NAMES,
    VIR_ERR_NO_DOMAIN,
    VIR_ERR_OPERATION_INVALID,
    Connection,
    Watchdog,
    connection_lost,
    err_code,
    err_text,
    is_local_uri,
)

from . import guest_params as gp
from . import ocf, statefile
from .ocf import AgentError, Env, Logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Sequence, Tuple

DEFAULT_TIMEOUTS = {
    "start": 90.0,
    "stop": 90.0,
    "monitor": 30.0,
    "status": 30.0,
    "migrate_to": 120.0,
    "migrate_from": 60.0,
    "validate-all": 30.0,
    "reload-agent": 10.0,
}
MIGRATE_FROM_GRACE = 5.0  # seconds for a migrated domain to show up on the target
UTILIZATION = ("cpu", "hv_memory", "host_memory")
RUNTIME_DIR = virt.QEMU_STATE_DIR  # libvirtd's status files of running QEMU domains
POLL = 0.025  # state polling interval while waiting for a stop/start (s)
SHUTDOWN_RESEND = 3.0  # re-send the graceful request this often (lost ACPI presses)
USAGE = (
    "usage: Guest {start|stop|monitor|status|migrate_to|migrate_from|reload-agent|"
    "meta-data|validate-all}"
)
KNOWN_DRIVERS = frozenset(
    (
        "qemu",
        "test",
        "xen",
        "libxl",
        "lxc",
        "vbox",
        "vmwareplayer",
        "vmwarews",
        "vmwarefusion",
        "esx",
        "gsx",
        "vpx",
        "hyperv",
        "bhyve",
        "openvz",
        "vz",
        "parallels",
        "ch",
        "remote",
        "uml",
        "phyp",
        "xenapi",
    )
)


def load_libvirt() -> Any:
    """libvirt, or AgentError(ERR_INSTALLED) when python3-libvirt is missing."""
    try:
        return virt.load_libvirt()
    except virt.LibvirtUnavailable as e:
        raise AgentError(ocf.ERR_INSTALLED, str(e)) from None


def parse_domain_xml(text: str, where: str) -> Tuple[str, Any]:
    """(name, root element) of a domain XML; AgentError(ERR_CONFIGURED) if it is not one."""
    try:
        return virt.parse_domain(text, where)
    except virt.DomainXMLError as e:
        raise AgentError(ocf.ERR_CONFIGURED, f"parameter config: {e}") from None


def write_config(path: str, text: str) -> None:
    """Replace the file behind ``path`` (a symlink is followed, not replaced) atomically,
    with the old file's mode and owner.  Refuses (OSError) when the file does not exist:
    its directory may be an unmounted mount point, and a new file there would be found
    instead of the real one once the storage is mounted again."""
    real = os.path.realpath(path)
    st = os.stat(real)  # FileNotFoundError: nothing to replace, so nothing is written
    tmp = f"{real}.kvmha-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o7777)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, real)
    except BaseException:
        statefile.remove(tmp)
        raise


class Request:
    """One libvirt call run in its own thread, so that the caller keeps polling and keeps
    its deadline while the call waits (a guest agent that does not answer)."""

    def __init__(self, lv: Any, fn: Any, *args: Any) -> None:
        import _thread

        self.error: BaseException | None = None
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self._lv = lv
        _thread.start_new_thread(self._run, (fn, args))

    def _run(self, fn: Any, args: Tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except BaseException as e:
            self.error = e
        finally:
            self._lock.release()

    def done(self) -> bool:
        if self._lock.acquire(blocking=False):
            self._lock.release()
            return True
        return False


class Guest:
    def __init__(
        self, action: str, env: Env, params: gp.Params, log: Logger, *, hard_exit: bool = True
    ) -> None:
        self.action = action
        self.env = env
        self.p = params
        self.log = log
        self.config = params.s("config")
        self.uri = params.s("hypervisor")
        self.timeout = env.timeout_s(DEFAULT_TIMEOUTS.get(action, 30.0))
        # Finish before Pacemaker's own timer: keep 10 % (0.5-2 s) for the exit.
        margin = max(0.5, min(2.0, self.timeout * 0.1))
        self.deadline = time.monotonic() + max(0.5, self.timeout - margin)
        self.hard_exit = hard_exit
        self.wd = Watchdog(self.deadline, on_exit=self.on_deadline)
        self.state_path = statefile.path_for(env.environ, env.instance, self.config)
        self._state: Dict[str, str] | None = None
        self._conn: Connection | None = None
        self._cfg_key = ""
        self.param_errors: List[str] = []

    def dispatch(self) -> int:
        action = self.action
        if action in ("monitor", "status"):
            return self.monitor()
        if action == "start":
            return self.start()
        if action == "stop":
            return self.stop()
        if action == "migrate_to":
            return self.migrate_to()
        if action == "migrate_from":
            return self.migrate_from()
        if action == "validate-all":
            return self.validate()
        # reload-agent: reloadable values are read on every run; nothing to apply.  Bad
        # values are logged and shown by the next monitor (190), never a 6 here.
        if self.param_errors:
            ocf.exit_reason(self.param_errors[0], self.env.environ)
        else:
            self.log.info("reload-agent: parameters validated")
        return ocf.SUCCESS

    def on_deadline(self, rc: int, reason: str) -> None:
        """The watchdog's exit: with hard_exit, print the reason and end the process now
        (the main thread may be inside a libvirt call that never returns); in process,
        interrupt the main thread, which returns the verdict (verdict_at_deadline)."""
        if self.hard_exit:
            if reason:
                ocf.exit_reason(reason, self.env.environ)
            os._exit(rc)
        virt.interrupt_exit(rc, reason)

    def verdict_at_deadline(self) -> int:
        """In process: wait for the watchdog's verdict, absorb its interrupt, answer it."""
        end = time.monotonic() + 15.0
        try:
            while self.wd.fired is None and time.monotonic() < end:
                time.sleep(0.01)
            for _ in range(50):  # the interrupt lands within one of these
                time.sleep(0.01)
        except KeyboardInterrupt:
            pass
        rc, reason = self.wd.fired or (ocf.ERR_GENERIC, "operation timed out")
        if reason:
            raise AgentError(rc, reason)
        return rc

    # ------------------------------------------------------------------ helpers
    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def state(self) -> Dict[str, str]:
        if self._state is None:
            self._state = statefile.load(self.state_path)
        return self._state

    def save_state(self) -> None:
        statefile.save(self.state_path, self.state)

    def connect(self) -> Connection:
        if self._conn is None:
            self._conn = Connection(load_libvirt(), self.uri, self.wd)
        return self._conn

    def config_problem(self) -> str | None:
        """Why the config file cannot be used on this node, or None."""
        try:
            st = os.stat(self.config)
        except OSError as e:
            return f"config file {self.config} is not accessible ({e.strerror})"
        if (st.st_mode & 0o170000) != 0o100000:  # S_ISREG without importing stat
            return f"config file {self.config} is not a regular file"
        if not os.access(self.config, os.R_OK):
            return f"config file {self.config} is not readable"
        self._cfg_key = f"{st.st_mtime_ns}:{st.st_size}"
        return None

    def cached_name(self) -> str | None:
        """The domain name remembered for this resource (survives an unmounted config)."""
        st = self.state
        if st.get("config") == self.config and st.get("name"):
            return st["name"]
        return None

    @property
    def resource(self) -> str:
        """The resource id (a clone's instance number stripped): the mark the agent writes
        into every domain it starts or receives, and looks guests up by."""
        return (self.env.instance or "").split(":", 1)[0]

    def read_config(self) -> Tuple[str, str, Any]:
        """(domain name, XML text, parsed root) of the config file; caches the name."""
        try:
            with open(self.config, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise AgentError(
                ocf.ERR_INSTALLED, f"config file {self.config} cannot be read ({e})"
            ) from None
        name, root = parse_domain_xml(text, self.config)
        self.remember_name(name)
        return name, text, root

    def remember_name(self, name: str) -> None:
        st = self.state
        if (
            st.get("name") != name
            or st.get("config") != self.config
            or st.get("key") != self._cfg_key
        ):
            st.update(config=self.config, key=self._cfg_key, name=name)
            self.save_state()

    def domain_name(self) -> str:
        """Name from the cache when the config file is unchanged, else parsed (and cached).
        Call config_problem() first."""
        st = self.state
        if st.get("config") == self.config and st.get("key") == self._cfg_key and st.get("name"):
            return st["name"]
        return self.read_config()[0]

    def is_off(self, dom: Any) -> bool:
        return self.connect().state(dom)[0] == SHUTOFF

    def wait_off(self, dom: Any, until: float) -> bool:
        while True:
            if self.is_off(dom):
                return True
            if time.monotonic() + POLL > until:
                return False
            time.sleep(POLL)

    def local_pids(self, name: str | None) -> List[int]:
        """PIDs of this resource's QEMU processes, found without libvirt: libvirtd's
        status files (/run/libvirt/qemu/*.xml) give each running domain's mark, name and
        pid; the process table gives the QEMU with ``-name NAME`` of a known name.  A
        domain that merely has the resource id as its name is never counted.  Raises
        TimeoutError when the scan cannot finish."""
        from .procscan import find_qemu_pids

        end = time.monotonic() + 2.0
        pids = {
            d.pid
            for d in virt.runtime_domains(RUNTIME_DIR, deadline=end)
            if (self.resource and d.mark == self.resource) or (name and d.name == name)
        }
        if name:
            pids.update(find_qemu_pids(name, deadline=end))
        return sorted(pids)

    def process_verdict(self, name: str | None, why: str, *, stopping: bool) -> Tuple[int, str]:
        """Decide from the QEMU processes (libvirt down or not answering)."""
        what = name or f"the domain of {self.resource or 'this resource'}"
        if not is_local_uri(self.uri) or virt.uri_driver(self.uri) != "qemu":
            return ocf.ERR_GENERIC, f"{why}; cannot check {what} without libvirt on {self.uri}"
        try:
            pids = self.local_pids(name)
        except (TimeoutError, OSError) as e:
            return ocf.ERR_GENERIC, f"{why}; QEMU process scan incomplete ({e})"
        if stopping:
            if pids:
                return ocf.ERR_GENERIC, (
                    f"cannot stop {what}: {why}, and its QEMU process "
                    f"(pid {', '.join(map(str, pids))}) still runs"
                )
            self.log.warning(f"{why}; no QEMU process of {what} runs: it is stopped")
            return ocf.SUCCESS, ""
        if pids:
            self.log.warning(f"{why}; QEMU process {pids[0]} of {what} runs: reporting it running")
            return ocf.SUCCESS, ""
        self.log.info(f"{why}; no QEMU process of {what}: not running")
        return ocf.NOT_RUNNING, ""

    def known_name(self) -> Tuple[str | None, str | None]:
        """(domain name, problem): the name from the config file, or, when the config
        cannot be used (missing, unreadable, half-written, not a domain), the name this
        host remembered for the resource (None if none) and the reason."""
        problem = self.config_problem()
        if not problem:
            try:
                return self.domain_name(), None
            except AgentError as e:
                problem = e.reason
        return self.cached_name(), problem

    def find_domain(self, conn: Connection, name: str | None, by_mark: bool) -> Any | None:
        """This resource's domain on this host: by its name, else (when by_mark, i.e. the
        config cannot be read) the active domain that carries the resource's mark."""
        if name:
            dom = conn.lookup(name)
            if dom is not None:
                return dom
        if by_mark and self.resource:
            marked = conn.marked(self.resource)
            if len(marked) > 1:
                self.log.error(
                    f"{len(marked)} domains carry the mark of {self.resource}: "
                    f"{', '.join(d.name() for d in marked)}"
                )
            if marked:
                self.remember_found(marked[0].name())
                return marked[0]
        return None

    def remember_found(self, name: str) -> None:
        """Remember a name found by the mark, so later runs look it up directly."""
        st = self.state
        if st.get("name") != name or st.get("config") != self.config:
            st.update(config=self.config, key="", name=name)
            self.save_state()

    # ------------------------------------------------------------------ monitor
    def monitor(self) -> int:
        """See the return-code contract in docs/agent.md: never 6; 7 only when no domain
        of this resource runs here; a broken config or parameter under a running guest
        gives 190 with the reason; the state reason decides between 0, 190 and 1."""
        probe = self.env.is_probe(self.action)
        name, problem = self.known_name()
        degraded = [problem] if problem else []
        degraded += self.param_errors
        self.wd.verdict = lambda step: self.process_verdict(
            name, f"libvirt did not answer in time while {step}", stopping=False
        )
        try:
            conn = self.connect()
        except AgentError:
            raise
        except Exception as e:
            rc, why = self.process_verdict(
                name, f"cannot connect to {self.uri} ({err_text(e)})", stopping=False
            )
            if why:
                raise AgentError(rc, why) from None
            if rc == ocf.SUCCESS and degraded:
                return self.degraded(degraded)
            return rc
        dom = self.find_domain(conn, name, by_mark=problem is not None)
        if dom is None:
            if problem:
                self.log.info(f"{problem}; no domain of {self.resource} runs here")
            return ocf.NOT_RUNNING
        dom_name: str = dom.name()
        state, reason = conn.state(dom)
        verdict = virt.health(state, reason)
        desc = virt.describe(state, reason)
        if verdict == "off":
            return ocf.NOT_RUNNING
        if verdict == "failed":
            raise AgentError(ocf.ERR_GENERIC, f"domain {dom_name} is {desc}")
        if verdict == "held":
            return self.degraded([f"domain {dom_name} is {desc}", *degraded])
        if problem and probe:
            return self.degraded(degraded)
        self.wd.verdict = self.wd.default_verdict
        self.run_monitor_scripts(dom_name)
        self.update_utilization(dom)
        if self.env.check_level >= 10:
            try:
                self.health(dom, dom_name)
            except AgentError as e:
                if not self.in_start_grace():
                    raise
                degraded.insert(0, f"still starting (health_start_grace): {e.reason}")
        return self.degraded(degraded) if degraded else ocf.SUCCESS

    def degraded(self, reasons: List[str]) -> int:
        """OCF_RUNNING_DEGRADED (190) with the reasons as the exit reason: crm_mon shows
        it, Pacemaker counts it as running and leaves the guest alone."""
        text = "; ".join(reasons)
        self.log.warning(f"running degraded: {text}")
        ocf.exit_reason(text, self.env.environ)
        return ocf.DEGRADED

    def run_monitor_scripts(self, name: str) -> None:
        scripts = self.p.s("monitor_scripts").split()
        if not scripts:
            return
        import subprocess

        for script in scripts:
            self.wd.step = f"running monitor script {script}"
            try:
                res = subprocess.run(
                    [script],
                    capture_output=True,
                    check=False,
                    timeout=max(0.1, self.remaining() - 0.2),
                )
            except subprocess.TimeoutExpired:
                raise AgentError(
                    ocf.ERR_GENERIC, f"monitor script {script} for {name} timed out"
                ) from None
            except OSError as e:
                raise AgentError(
                    ocf.ERR_GENERIC, f"monitor script {script} cannot run ({e})"
                ) from None
            if res.returncode != 0:
                out = (res.stdout + res.stderr).decode("utf-8", "replace").strip()[-300:]
                raise AgentError(
                    ocf.ERR_GENERIC,
                    f"monitor script {script} for {name} " f"returned {res.returncode}: {out}",
                )

    def update_utilization(self, dom: Any) -> None:
        """Set cpu / hv_memory / host_memory utilization only when they differ from what
        was last set (remembered in the state file), so monitors do not run crm_resource;
        unset_utilization_* wins over autoset_utilization_*."""
        rsc = self.resource
        want = [
            k
            for k in UTILIZATION
            if self.p.b(f"autoset_utilization_{k}") and not self.p.b(f"unset_utilization_{k}")
        ]
        if not want or not rsc:
            return
        info = self.connect().call("reading domain info", dom.info)
        values = {"cpu": str(info[3]), "hv_memory": str(int(info[1]) // 1024)}
        values["host_memory"] = values["hv_memory"]
        changed = [(k, values[k]) for k in want if self.state.get(f"util_{k}") != values[k]]
        if not changed:
            return
        for key, value in changed:
            self.wd.step = f"setting utilization {key}"
            problem = self.crm_utilization(rsc, key, value)
            if problem is None:
                self.log.info(f"utilization {key} of {rsc} set to {value}")
            else:
                self.log.warning(f"could not set utilization {key}={value} of {rsc}: {problem}")
            # remembered either way: no retry on every monitor; start resets the memory
            self.state[f"util_{key}"] = value
        self.save_state()

    def unset_utilization(self) -> None:
        """unset_utilization_*: remove those utilization attributes (start, migrate_from)."""
        rsc = self.resource
        for key in UTILIZATION:
            if rsc and self.p.b(f"unset_utilization_{key}"):
                self.wd.step = f"removing utilization {key}"
                problem = self.crm_utilization(rsc, key, None)
                if problem is None:
                    self.log.info(f"utilization {key} of {rsc} removed")
                else:
                    self.log.warning(f"could not remove utilization {key} of {rsc}: {problem}")

    def crm_utilization(self, rsc: str, key: str, value: str | None) -> str | None:
        """Set (or, with None, delete) one utilization attribute; why not, or None."""
        from kvmha import pcmk  # lazy: only when a value changes, never in a plain monitor

        try:
            pcmk.set_utilization(rsc, key, value, max(0.1, min(10.0, self.remaining() - 0.5)))
        except Exception as e:  # KvmhaError (failed, timed out, no cluster), OSError
            return str(e)
        return None

    def health(self, dom: Any, name: str) -> None:
        from . import health

        per = float(self.p.i("health_timeout"))
        checks: List[Tuple[str, Any]] = []
        if self.p.b("health_agent_ping"):
            checks.append(("guest agent ping", lambda t: health.agent_ping(dom, t)))
        cmd = self.p.s("health_command")
        if cmd:
            import shlex

            argv = shlex.split(cmd)
            expect = self.p.i("health_command_status")
            checks.append(("health_command", lambda t: health.agent_exec(dom, argv, expect, t)))
        for ep in self.p.s("health_tcp").split():
            hp = split_host_port(ep)
            if hp:
                host, port = hp
                checks.append((f"TCP {ep}", lambda t, h=host, n=port: health.tcp(h, n, t)))
        url = self.p.s("health_http")
        if url:
            expect_http = self.p.i("health_http_status")
            checks.append((f"HTTP {url}", lambda t: health.http(url, expect_http, t)))
        for label, check in checks:
            t = min(per, self.remaining() - 0.3)
            if t <= 0:
                raise AgentError(ocf.ERR_GENERIC, f"health check {label} of {name}: no time left")
            self.wd.step = f"health check {label}"
            problem = check(t)
            if problem:
                raise AgentError(ocf.ERR_GENERIC, f"{name}: {problem}")
            self.log.debug(f"{name}: health check {label} passed")

    # ------------------------------------------------------------------ start
    def check_files(self) -> None:
        """File-system checks for validate-all and start (node-local: ERR_INSTALLED)."""
        snap = self.p.s("snapshot")
        if snap and not os.path.isdir(snap):
            raise AgentError(
                ocf.ERR_INSTALLED, f"parameter snapshot: directory {snap} does not exist"
            )
        for script in self.p.s("monitor_scripts").split():
            if not (os.path.isfile(script) and os.access(script, os.X_OK)):
                raise AgentError(
                    ocf.ERR_INSTALLED,
                    f"parameter monitor_scripts: {script} " "is not an executable file",
                )

    def start(self) -> int:
        self.refuse_unsupported()
        problem = self.config_problem()
        if problem:
            raise AgentError(ocf.ERR_INSTALLED, problem)
        name, xml, root = self.read_config()
        self.check_files()
        try:
            conn = self.connect()
        except AgentError:
            raise
        except Exception as e:
            raise AgentError(
                ocf.ERR_GENERIC, f"cannot connect to {self.uri}: {err_text(e)}"
            ) from None
        dom = conn.lookup(name)
        if dom is not None:
            state, _ = conn.state(dom)
            if state not in (SHUTOFF, CRASHED):
                self.log.info(f"{name} is already running ({STATE_NAMES.get(state)})")
                return self.finish_start(dom, name)
            if state == CRASHED:
                self.call_ignoring_off(dom.destroy, f"destroying crashed {name}")
            if conn.call("checking persistence", dom.isPersistent):
                # Like VirtualDomain: the config file is the definition of record; a
                # persistent definition could autostart it behind the cluster's back.
                self.undefine(conn, dom, name)
        self.double_start_guard(name)
        if self.p.b("start_resources"):
            self.start_resources(conn, root)
        for key in UTILIZATION:
            self.state.pop(f"util_{key}", None)
        dom = self.create(conn, name, xml, root)
        t0 = time.monotonic()
        while conn.state(dom)[0] == SHUTOFF:
            if self.remaining() < POLL:
                raise AgentError(ocf.ERR_GENERIC, f"{name} did not start")
            time.sleep(POLL)
        self.log.info(f"{name} started ({time.monotonic() - t0:.2f}s after create)")
        return self.finish_start(dom, name)

    def undefine(self, conn: Connection, dom: Any, name: str) -> None:
        """Undefine the persistent definition, after backing it up next to the agent's
        state (/run/resource-agents/kvmha-Guest-<rsc>.<name>.xml; VirtualDomain users lost
        definitions here, resource-agents #487 and #364).  UEFI guests keep their NVRAM
        (VIR_DOMAIN_UNDEFINE_KEEP_NVRAM: the transient guest boots from it), and managed
        save images and snapshot metadata do not block the undefine."""
        lv = conn.lv
        self.log.info(
            f"undefining the persistent definition of {name} "
            "(the guest runs as a transient domain from config)"
        )
        try:
            xml = conn.call(
                f"reading the definition of {name}",
                dom.XMLDesc,
                lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE,
            )
            backup = self.state_path[: -len(".state")] + f".{name}.xml"
            with open(backup, "w", encoding="utf-8") as f:
                f.write(xml)
            self.log.info(f"backed up the definition of {name} to {backup}")
        except (lv.libvirtError, OSError) as e:
            self.log.warning(f"not undefining {name}: its definition cannot be backed up ({e})")
            return
        # a guest with NVRAM cannot be undefined without saying what becomes of it
        flags = lv.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM if "<nvram" in xml else 0
        try:
            conn.call(f"undefining {name}", dom.undefineFlags, flags)
        except lv.libvirtError as e:
            self.log.warning(f"could not undefine {name}: {err_text(e)}")

    def marked_xml(self, xml: str, root: Any) -> str:
        """The config with the resource's mark in <metadata> (the file itself is left
        alone): libvirt keeps it in the live definition and migrates it with the guest."""
        if not self.resource:
            return xml
        import xml.etree.ElementTree as ET

        virt.with_mark(root, self.resource)
        return ET.tostring(root, encoding="unicode")

    def create(self, conn: Connection, name: str, xml: str, root: Any) -> Any:
        lv = conn.lv
        snap = self.p.s("snapshot")
        saved = f"{snap}/{name}.state" if snap else ""
        if saved and os.path.exists(saved):
            try:
                conn.call(f"restoring {name} from {saved}", conn.conn.restore, saved)
            except lv.libvirtError as e:
                # like VirtualDomain: an error, and the saved state is kept (a cold boot
                # would throw away the memory the admin asked to keep)
                raise AgentError(
                    ocf.ERR_GENERIC,
                    f"restoring {name} from {saved} failed ({err_text(e)}); the saved state "
                    "is kept: remove it to start the guest fresh",
                ) from None
            self.log.info(f"{name} restored from {saved}")
            dom = conn.lookup(name)
            if dom is None:
                raise AgentError(ocf.ERR_GENERIC, f"{name} is not there after its restore")
            statefile.remove(saved)
            self.ensure_mark(conn, dom)
            return dom
        try:
            return conn.call(f"creating {name}", conn.conn.createXML, self.marked_xml(xml, root), 0)
        except lv.libvirtError as e:
            raise AgentError(ocf.ERR_GENERIC, f"failed to start {name}: {err_text(e)}") from None

    def ensure_mark(self, conn: Connection, dom: Any) -> None:
        """Mark a running domain as this resource's when it is not yet (restored from an
        old save image, or received from a host that ran an older agent)."""
        if not self.resource:
            return
        lv = conn.lv
        try:
            if conn.mark(dom) == self.resource:
                return
            conn.call(
                "marking the domain",
                dom.setMetadata,
                lv.VIR_DOMAIN_METADATA_ELEMENT,
                virt.mark_xml(self.resource),
                virt.MARK_PREFIX,
                virt.MARK_NS,
                lv.VIR_DOMAIN_AFFECT_LIVE,
            )
        except lv.libvirtError as e:
            self.log.warning(f"could not mark {dom.name()} as {self.resource}: {err_text(e)}")

    def finish_start(self, dom: Any, name: str) -> int:
        """After start/migrate_from: the guest counts as started once its monitor scripts
        and its health checks pass (retried until the deadline: a guest that has just been
        created is still booting, and a deep monitor right after start must not fail on
        that), then utilization."""
        grace = self.p.i("health_start_grace")
        self.state["started"] = str(int(time.time()))
        self.save_state()
        while True:
            try:
                self.run_monitor_scripts(name)
                if not grace:
                    self.health(dom, name)
                break
            except AgentError as e:
                gone = self.stopped_while_starting(dom)
                if gone:  # waiting longer cannot help: say so now (a fence, a crash)
                    raise AgentError(
                        ocf.ERR_GENERIC, f"{name} {gone} while starting ({e.reason})"
                    ) from None
                if self.remaining() < 1.5:
                    raise AgentError(ocf.ERR_GENERIC, f"{name} runs but {e.reason}") from None
                time.sleep(0.5)
        self.unset_utilization()
        self.update_utilization(dom)
        return ocf.SUCCESS

    def stopped_while_starting(self, dom: Any) -> str:
        """'' while the domain runs (or its state cannot be read); else what became of it:
        destroyed (a fence through the listener), shut off or crashed. The start's health
        wait then ends at once instead of at the operation's timeout."""
        conn = self.connect()
        try:
            state, _reason = conn.state(dom)
        except conn.lv.libvirtError:
            return ""
        if state == SHUTOFF:
            return "was shut off or destroyed"
        if state == CRASHED:
            return "crashed"
        return ""

    def in_start_grace(self) -> bool:
        """True within health_start_grace seconds of this host's last start of the guest."""
        grace = self.p.i("health_start_grace")
        try:
            started = int(self.state.get("started", "0"))
        except ValueError:
            return False
        return bool(grace) and 0 <= time.time() - started < grace

    def start_resources(self, conn: Connection, root: Any) -> None:
        lv = conn.lv
        nets = {
            el.get("network")
            for el in root.iterfind("devices/interface/source")
            if el.get("network")
        }
        pools = {el.get("pool") for el in root.iterfind("devices/disk/source") if el.get("pool")}
        for net in sorted(n for n in nets if n):
            try:
                obj = conn.call(f"looking up network {net}", conn.conn.networkLookupByName, net)
                if not obj.isActive():
                    conn.call(f"starting network {net}", obj.create)
                    self.log.info(f"started network {net}")
            except lv.libvirtError as e:
                raise AgentError(
                    ocf.ERR_GENERIC, f"cannot start network {net}: {err_text(e)}"
                ) from None
        for pool in sorted(p for p in pools if p):
            try:
                obj = conn.call(f"looking up pool {pool}", conn.conn.storagePoolLookupByName, pool)
                if not obj.isActive():
                    conn.call(f"starting pool {pool}", obj.create, 0)
                    self.log.info(f"started storage pool {pool}")
                conn.call(f"refreshing pool {pool}", obj.refresh, 0)
            except lv.libvirtError as e:
                raise AgentError(
                    ocf.ERR_GENERIC, f"cannot start storage pool {pool}: {err_text(e)}"
                ) from None

    def double_start_guard(self, name: str) -> None:
        from .peers import running_on_peers

        self.wd.step = "asking peers whether they run the guest"
        budget = min(float(self.p.i("peer_timeout")), max(0.0, self.remaining() - 5.0))
        running = running_on_peers(self.p, self.env, name, budget, self.log)
        if running:
            raise AgentError(
                ocf.ERR_GENERIC,
                f"refusing to start {name}: it is already " f"running on {', '.join(running)}",
            )

    # ------------------------------------------------------------------ stop
    def stop(self) -> int:
        """Success only when this resource's domain is confirmed off or absent here: found
        by the config's name, or (config unusable) by the remembered name or the mark."""
        name, problem = self.known_name()
        if problem:
            self.log.warning(
                f"stop: {problem}; stopping "
                + (f"domain {name}" if name else f"the domain marked {self.resource}")
                + " if it runs"
            )
        self.wd.verdict = lambda step: self.process_verdict(
            name, f"libvirt did not answer in time while {step}", stopping=True
        )
        # libvirtd may die in the middle of a stop and come back (systemd restarts it):
        # reconnect and go on, rather than fail the stop and have the host fenced
        while True:
            try:
                return self.stop_once(name, by_mark=problem is not None)
            except Exception as e:
                if not virt.is_transient(e) or self.remaining() < 2.0:
                    raise
                self.log.warning(
                    f"libvirt error while stopping {name or self.resource} ({err_text(e)}); "
                    "retrying"
                )
                if connection_lost(e):
                    self._conn = None
                time.sleep(0.5)

    def stop_once(self, known: str | None, *, by_mark: bool) -> int:
        conn = self.connect_for_stop(known)
        if conn is None:
            return ocf.SUCCESS
        dom = self.find_domain(conn, known, by_mark)
        if dom is None:
            self.log.info(f"{known or 'no domain of ' + self.resource} is not running")
            return ocf.SUCCESS
        name: str = dom.name()
        state, reason = conn.state(dom)
        if state == SHUTOFF:
            self.log.info(f"{name} is not running")
            return ocf.SUCCESS
        if self.p.b("save_config_on_stop") and not by_mark:
            self.save_config(conn, dom, name)
        if self.p.b("force_stop"):
            return self.destroy(dom, name)
        if state in (PAUSED, CRASHED, PMSUSPENDED) and not (
            self.p.s("snapshot") and state == PAUSED
        ):
            # a paused, crashed or suspended guest cannot react to a shutdown request:
            # waiting out the graceful window would only delay the failover
            self.log.info(f"{name} is {virt.describe(state, reason)}: forcing it off at once")
            return self.destroy(dom, name)
        if self.p.s("snapshot"):
            rc = self.save_snapshot(conn, dom, name)
            if rc is not None:
                return rc
        return self.graceful_stop(conn, dom, name)

    def connect_for_stop(self, name: str | None) -> Connection | None:
        """Connect, retrying while libvirtd is unreachable; None means the QEMU process is
        verifiably gone (nothing to stop).  Fails before the deadline otherwise."""
        while True:
            try:
                return self.connect()
            except AgentError:
                raise
            except Exception as e:
                why = f"cannot connect to {self.uri} ({err_text(e)})"
                rc, reason = self.process_verdict(name, why, stopping=True)
                if rc == ocf.SUCCESS:
                    return None
                if self.remaining() < 1.5:
                    raise AgentError(rc, reason) from None
                time.sleep(1.0)

    def call_ignoring_off(self, fn: Any, step: str, *args: Any) -> str | None:
        """Call fn; None on success or 'not running' / 'no domain', else the error."""
        conn = self.connect()
        try:
            conn.call(step, fn, *args)
        except conn.lv.libvirtError as e:
            if err_code(e) in (VIR_ERR_NO_DOMAIN, VIR_ERR_OPERATION_INVALID):
                return None
            return err_text(e)
        return None

    def destroy(self, dom: Any, name: str) -> int:
        while True:
            t0 = time.monotonic()
            err = self.call_ignoring_off(dom.destroy, f"forcing {name} off")
            if self.wait_off(dom, min(self.deadline, time.monotonic() + 5.0)):
                self.log.info(f"{name} forced off in {time.monotonic() - t0:.2f}s")
                return ocf.SUCCESS
            if self.remaining() < 1.0:
                raise AgentError(
                    ocf.ERR_GENERIC,
                    f"{name} is still running after forced "
                    f"power off{f' ({err})' if err else ''}",
                )
            self.log.warning(f"{name} still running after destroy ({err}); retrying")

    def graceful_stop(self, conn: Connection, dom: Any, name: str) -> int:
        """Ask the guest to shut down (resent every SHUTDOWN_RESEND s: an ACPI press before
        acpid listens is lost), poll the state, destroy at the end of the window.  The
        request runs in its own thread, so a guest agent that does not answer never holds
        the stop past its window; a failing guest-agent request falls back to ACPI."""
        flags = gp.shutdown_flags(self.p.s("shutdown_mode"))
        mode = self.p.s("shutdown_mode") or "default"
        # keep time to force it off: destroy itself takes ~0.2 s, up to seconds under load
        reserve = min(5.0, max(1.0, self.timeout * 0.2))
        t0 = time.monotonic()
        end = self.deadline - reserve
        if self.p.i("shutdown_timeout") > 0:
            end = min(end, t0 + self.p.i("shutdown_timeout"))
        next_request = t0
        requests = 0
        pending: Request | None = None
        while True:
            now = time.monotonic()
            if pending is not None and pending.done():
                err, pending = pending.error, None
                if err is not None:
                    flags, mode, give_up = self.shutdown_refused(err, flags, mode, name)
                    if give_up:
                        return self.destroy(dom, name)
                    if give_up is None:  # fell back to another mode: ask again now
                        next_request = now
            if pending is None and now >= next_request and now < end:
                pending = Request(conn.lv, dom.shutdownFlags, flags)
                self.wd.step = f"asking {name} to shut down ({mode})"
                requests += 1
                next_request = now + SHUTDOWN_RESEND
            if self.is_off(dom):
                self.log.info(f"{name} shut down gracefully in {time.monotonic() - t0:.2f}s")
                return ocf.SUCCESS
            if time.monotonic() >= end:
                break
            time.sleep(POLL)
        self.log.warning(
            f"{name} did not shut down within {time.monotonic() - t0:.1f}s "
            f"({requests} request(s), mode {mode}); forcing it off"
        )
        return self.destroy(dom, name)

    def shutdown_refused(
        self, err: BaseException, flags: int, mode: str, name: str
    ) -> Tuple[int, str, bool | None]:
        """(flags, mode, give_up) after a failed shutdown request: give_up True means
        destroy now, None means retry at once with the new flags, False wait and resend."""
        msg = err_text(err)
        code = err_code(err)
        if code in (VIR_ERR_NO_DOMAIN, VIR_ERR_OPERATION_INVALID) or (
            "End of file from agent socket" in msg
        ):
            # gone, not running, or the agent's shutdown raced its reply: the state decides
            self.log.debug(f"shutdown request for {name}: {msg}")
            return flags, mode, False
        agent_flag = gp.SHUTDOWN_MODES["agent"]
        acpi_flag = gp.SHUTDOWN_MODES["acpi"]
        if flags & agent_flag and flags != acpi_flag:
            self.log.warning(
                f"shutdown of {name} through the guest agent failed ({msg}); trying ACPI"
            )
            return acpi_flag, "acpi", None
        if virt.is_transient(err):
            self.log.warning(f"shutdown request for {name} failed ({msg}); resending")
            return flags, mode, False
        self.log.warning(f"graceful shutdown of {name} ({mode}) refused: {msg}; forcing it off")
        return flags, mode, True

    def save_snapshot(self, conn: Connection, dom: Any, name: str) -> int | None:
        """Save the guest's state to <snapshot>/<name>.state; None when the save failed
        (the caller goes on with a graceful shutdown, not an immediate destroy)."""
        path = f"{self.p.s('snapshot')}/{name}.state"
        try:
            conn.call(f"saving {name} to {path}", dom.save, path)
            if self.wait_off(dom, self.deadline - 1.0):
                self.log.info(f"{name} saved to {path}")
                return ocf.SUCCESS
            why = "it still runs after the save"
        except conn.lv.libvirtError as e:
            why = err_text(e)
        self.log.warning(f"saving {name} to {path} failed ({why}); shutting it down instead")
        statefile.remove(path)  # a partial image must never be restored
        return None

    def save_config(self, conn: Connection, dom: Any, name: str) -> None:
        """save_config_on_stop: write the inactive definition back to ``config`` the way
        an admin would edit it: through a symlink to its target, keeping the file's mode
        and owner, atomically; never into a directory that is an empty mount point (the
        shared storage is not mounted: writing there would hide the real file later)."""
        lv = conn.lv
        try:
            xml = conn.call(
                f"reading the definition of {name}",
                dom.XMLDesc,
                lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE,
            )
            parse_domain_xml(xml, f"the definition of {name}")
            write_config(self.config, xml)
            self.log.info(f"saved the definition of {name} to {self.config}")
        except (lv.libvirtError, OSError, AgentError) as e:
            self.log.warning(f"could not save the definition of {name} to {self.config}: {e}")

    # ------------------------------------------------------------------ migration
    def migrate_to(self) -> int:
        from .migration import migrate_to

        target = self.env.meta("migrate_target")
        if not target:
            raise AgentError(
                ocf.ERR_CONFIGURED,
                "migrate_to needs OCF_RESKEY_CRM_meta_migrate_target (is allow-migrate set?)",
            )
        name, problem = self.known_name()
        if name is None:
            raise AgentError(ocf.ERR_INSTALLED, f"{problem}")
        conn = self.connect()
        dom = conn.lookup(name)
        if dom is None or self.is_off(dom):
            raise AgentError(ocf.ERR_GENERIC, f"migrate_to: {name} is not active here")
        if self.p.b("save_config_on_stop") and not problem:
            self.save_config(conn, dom, name)
        if self.p.b("start_resources") and not problem:
            self.start_resources_on(target)
        return migrate_to(conn, dom, name, target, self.p, self.log)

    def start_resources_on(self, target: str) -> None:
        """start_resources on the migration target, before the guest moves there (as
        VirtualDomain does against the remote URI)."""
        import contextlib

        from .migration import remote_uri

        root = self.read_config()[2]
        uri = remote_uri(self.p, target)
        try:
            remote = Connection(self.connect().lv, uri, self.wd)
        except Exception as e:
            raise AgentError(
                ocf.ERR_GENERIC,
                f"start_resources: cannot reach migration target {target} ({uri}): "
                f"{err_text(e)}",
            ) from None
        try:
            self.start_resources(remote, root)
        finally:
            with contextlib.suppress(Exception):
                remote.conn.close()

    def migrate_from(self) -> int:
        problem = self.config_problem()
        if problem:
            raise AgentError(ocf.ERR_INSTALLED, problem)
        name = self.domain_name()
        conn = self.connect()
        source = self.env.meta("migrate_source") or "the source"
        # migrate_to has finished on the source when this runs, so the domain is here,
        # perhaps paused for a moment more. One that never shows up, or vanishes (it was
        # fenced meanwhile), fails now rather than at the end of the timeout.
        t0 = time.monotonic()
        seen = False
        while True:
            dom = conn.lookup(name)
            if dom is not None:
                seen = True
                state, _ = conn.state(dom)
                if state == 1:  # running (not paused: migration still finishing)
                    break
            elif seen or time.monotonic() - t0 > MIGRATE_FROM_GRACE:
                raise AgentError(
                    ocf.ERR_GENERIC,
                    f"{name} {'vanished' if seen else 'did not arrive'} here during its "
                    f"migration from {source}",
                )
            if self.remaining() < 1.0:
                raise AgentError(
                    ocf.ERR_GENERIC, f"{name} is not running here after " f"migration from {source}"
                )
            time.sleep(POLL * 4)
        self.log.info(f"live migration of {name} from {source} succeeded")
        self.ensure_mark(conn, dom)
        if self.p.b("save_config_on_stop"):
            self.save_config(conn, dom, name)
        for key in UTILIZATION:
            self.state.pop(f"util_{key}", None)
        return self.finish_start(dom, name)

    # ------------------------------------------------------------------ validate / reload
    def refuse_unsupported(self) -> None:
        """validate-all and start refuse what they cannot honour (never accept and ignore:
        a 'stateless' guest that silently kept its state would be data kept unasked)."""
        hv = hypervisor_problem(self.uri)
        if hv:
            raise AgentError(ocf.ERR_CONFIGURED, hv)
        for name in gp.UNSUPPORTED_VIRTUALDOMAIN:
            value = (self.env.param(name) or "").strip()
            if value and ocf.parse_bool(value) is not False:
                raise AgentError(
                    ocf.ERR_CONFIGURED,
                    f"parameter {name} (of ocf:heartbeat:VirtualDomain) is not supported by "
                    "ocf:kvmha:Guest: remove it, or keep the guest under VirtualDomain",
                )

    def validate(self) -> int:
        self.refuse_unsupported()
        problem = self.config_problem()
        if problem:
            raise AgentError(ocf.ERR_INSTALLED, problem)
        self.read_config()
        self.check_files()
        try:
            self.connect()
        except AgentError:
            raise
        except Exception as e:
            raise AgentError(
                ocf.ERR_GENERIC,
                f"parameter hypervisor: cannot connect to " f"{self.uri} ({err_text(e)})",
            ) from None
        return ocf.SUCCESS


SUPPORTED_DRIVERS = ("qemu", "test")  # test: libvirt's test driver, for the unit tests


def hypervisor_problem(uri: str) -> str | None:
    """Why Guest refuses a hypervisor it knows but cannot look after: when libvirt does not
    answer, probe and stop decide from QEMU's processes and libvirtd's QEMU status files,
    which other drivers (lxc, xen, ...) do not have; a probe would report 7 while the
    guest runs (ocf:heartbeat:VirtualDomain supports them)."""
    driver = virt.uri_driver(uri)
    if driver in SUPPORTED_DRIVERS:
        return None
    return (
        f"parameter hypervisor={uri!r}: the {driver} driver is not supported: Guest runs "
        "QEMU/KVM guests only (use ocf:heartbeat:VirtualDomain for other hypervisors)"
    )


def _check_driver(uri: str) -> str | None:
    scheme = uri.partition(":")[0].split("+", 1)[0].lower()
    if scheme not in KNOWN_DRIVERS:
        return f"parameter hypervisor={uri!r}: unknown libvirt driver {scheme!r}"
    return None


def run(
    argv: Sequence[str], environ: Mapping[str, str] | None = None, *, hard_exit: bool = True
) -> int:
    env = Env(environ)
    if len(argv) < 2:
        sys.stderr.write(USAGE + "\n")
        return ocf.ERR_ARGS
    action = argv[1]
    if action == "meta-data":
        from .metadata import metadata_xml

        sys.stdout.write(metadata_xml())
        return ocf.SUCCESS
    if action in ("usage", "help", "--help", "-h"):
        sys.stdout.write(USAGE + "\n")
        return ocf.SUCCESS
    if action not in DEFAULT_TIMEOUTS:
        sys.stderr.write(USAGE + "\n")
        return ocf.ERR_UNIMPLEMENTED
    log = Logger(f"Guest({env.instance or 'kvmha'})", env.environ, action)
    if log.trace_path:
        log.debug(
            f"trace of {action} (OCF_TRACE_RA): environment "
            + " ".join(
                f"{k}={v}" for k, v in sorted(env.environ.items()) if k.startswith(("OCF_", "HA_"))
            )
        )
    params, errors = gp.parse(env)
    driver_problem = _check_driver(params.s("hypervisor")) if params.s("hypervisor") else None
    if driver_problem:
        errors.append(driver_problem)
    tolerant = action in ("stop", "monitor", "status", "reload-agent")
    if errors:
        for e in errors[1:]:
            log.error(e)
        if tolerant and (not driver_problem or action != "stop"):
            # Never 6 from a probe, monitor or reload-agent (Pacemaker would stop the
            # guest everywhere), and never fail a stop over a value it does not need:
            # defaults are used (a missing config: the guest is found by its mark); a
            # monitor reports 190 with the reason while the guest runs.
            log.warning(f"{action} with invalid parameters ({'; '.join(errors)})")
        else:
            raise AgentError(ocf.ERR_CONFIGURED, errors[0])
    guest = Guest(action, env, params, log, hard_exit=hard_exit)
    guest.param_errors = list(errors)
    try:
        rc = guest.dispatch()
    except KeyboardInterrupt:
        if guest.wd.fired is None:
            raise
        rc = guest.verdict_at_deadline()
    except BaseException:
        if not guest.wd.finish():
            rc = guest.verdict_at_deadline()  # the watchdog answers (and may end the run)
        else:
            raise
    else:
        if not guest.wd.finish():
            rc = guest.verdict_at_deadline()
    return rc


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    hard_exit: bool | None = None,
) -> int:
    """Entry point: never a traceback; any failure becomes an exit code and a reason.

    ``hard_exit`` (default: True when argv is None, i.e. run by the launcher) lets the
    watchdog end the process with os._exit at the deadline, the only way out of a libvirt
    call that never returns; in-process callers (tests) get the same verdict returned
    instead, through a KeyboardInterrupt in their thread."""
    if hard_exit is None:
        hard_exit = argv is None
    try:
        return run(sys.argv if argv is None else argv, environ, hard_exit=hard_exit)
    except AgentError as e:
        ocf.exit_reason(e.reason, environ)
        return e.rc
    except KeyboardInterrupt:
        ocf.exit_reason("interrupted", environ)
        return ocf.ERR_GENERIC
    except Exception as e:
        get_msg = getattr(e, "get_error_message", None)
        detail = get_msg() if get_msg else str(e)
        ocf.exit_reason(f"internal error: {type(e).__name__}: {detail}", environ)
        return ocf.ERR_GENERIC
