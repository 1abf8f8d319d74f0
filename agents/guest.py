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
from kvmha.virt import (
    CRASHED,
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
        # reload-agent: reloadable values were validated already; nothing to apply
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

    def fallback_name(self) -> str:
        """The domain name to look for when the config cannot be read and nothing is
        remembered on this node: the resource's own name ('kvmha guest add' makes them
        equal). A guest that arrived by live migration while the config was unreadable
        here must still be found, or the cluster would start it a second time elsewhere
        (VirtualDomain's issue #1231)."""
        return (self.env.get("OCF_RESOURCE_INSTANCE") or "").split(":", 1)[0]

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

    def process_verdict(self, name: str, why: str, *, stopping: bool) -> Tuple[int, str]:
        """Decide from the QEMU process list (libvirt down or not answering)."""
        from .procscan import find_qemu_pids

        if not is_local_uri(self.uri):
            return ocf.ERR_GENERIC, f"{why}; cannot check {name} on remote hypervisor"
        try:
            pids = find_qemu_pids(name, deadline=time.monotonic() + 2.0)
        except TimeoutError as e:
            return ocf.ERR_GENERIC, f"{why}; QEMU process scan incomplete ({e})"
        if stopping:
            if pids:
                return ocf.ERR_GENERIC, (
                    f"cannot stop {name}: {why}, and its QEMU process "
                    f"(pid {', '.join(map(str, pids))}) still runs"
                )
            self.log.warning(f"{why}; no QEMU process of {name} runs: it is stopped")
            return ocf.SUCCESS, ""
        if pids:
            self.log.warning(
                f"{why}; QEMU process {pids[0]} of {name} runs: " "reporting it running"
            )
            return ocf.SUCCESS, ""
        self.log.info(f"{why}; no QEMU process of {name}: not running")
        return ocf.NOT_RUNNING, ""

    # ------------------------------------------------------------------ monitor
    def monitor(self) -> int:
        probe = self.env.is_probe(self.action)
        problem = self.config_problem()
        if problem:
            if not probe:
                raise AgentError(ocf.ERR_GENERIC, problem)
            name = self.cached_name() or self.fallback_name()
            if not name:
                self.log.info(f"probe: {problem}; reporting not running")
                return ocf.NOT_RUNNING
        else:
            name = self.domain_name()
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
            return rc
        dom = conn.lookup(name)
        if dom is None:
            return ocf.NOT_RUNNING
        state, _reason = conn.state(dom)
        if state == SHUTOFF:
            return ocf.NOT_RUNNING
        if state == CRASHED:
            raise AgentError(ocf.ERR_GENERIC, f"domain {name} has crashed")
        if problem:  # probe found it running although the config is unreadable
            self.log.warning(f"{problem}; but domain {name} runs")
            return ocf.SUCCESS
        self.wd.verdict = self.wd.default_verdict
        self.run_monitor_scripts(name)
        self.update_utilization(dom)
        if self.env.check_level >= 10:
            self.health(dom, name)
        return ocf.SUCCESS

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
        """Set cpu / hv_memory utilization only when they differ from what was last set
        (remembered in the state file), so monitors do not run crm_resource."""
        want_cpu = self.p.b("autoset_utilization_cpu")
        want_mem = self.p.b("autoset_utilization_hv_memory")
        rsc = self.env.instance.split(":", 1)[0]
        if not (want_cpu or want_mem) or not rsc:
            return
        info = self.connect().call("reading domain info", dom.info)
        todo = []
        if want_cpu:
            todo.append(("cpu", str(info[3])))
        if want_mem:
            todo.append(("hv_memory", str(int(info[1]) // 1024)))
        changed = [(k, v) for k, v in todo if self.state.get(f"util_{k}") != v]
        if not changed:
            return
        import subprocess

        for key, value in changed:
            self.wd.step = f"setting utilization {key}"
            try:
                res = subprocess.run(
                    [
                        "crm_resource",
                        "--resource",
                        rsc,
                        "--utilization",
                        "--set-parameter",
                        key,
                        "--parameter-value",
                        value,
                    ],
                    capture_output=True,
                    check=False,
                    timeout=max(0.1, min(10.0, self.remaining() - 0.5)),
                )
                ok = res.returncode == 0
                detail = res.stderr.decode("utf-8", "replace").strip()
            except (OSError, subprocess.TimeoutExpired) as e:
                ok, detail = False, str(e)
            if ok:
                self.log.info(f"utilization {key} of {rsc} set to {value}")
            else:
                self.log.warning(f"could not set utilization {key}={value} of {rsc}: {detail}")
            # remembered either way: no retry on every monitor; start resets the memory
            self.state[f"util_{key}"] = value
        self.save_state()

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
            hp = gp.split_host_port(ep)
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
        lv = conn.lv
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
                self.log.info(
                    f"undefining the persistent definition of {name} "
                    "(the guest runs as a transient domain from config)"
                )
                try:
                    conn.call(f"undefining {name}", dom.undefine)
                except lv.libvirtError as e:
                    self.log.warning(f"could not undefine {name}: {err_text(e)}")
        self.double_start_guard(name)
        if self.p.b("start_resources"):
            self.start_resources(conn, root)
        self.state.pop("util_cpu", None)
        self.state.pop("util_hv_memory", None)
        dom = self.create(conn, name, xml)
        t0 = time.monotonic()
        while conn.state(dom)[0] == SHUTOFF:
            if self.remaining() < POLL:
                raise AgentError(ocf.ERR_GENERIC, f"{name} did not start")
            time.sleep(POLL)
        self.log.info(f"{name} started ({time.monotonic() - t0:.2f}s after create)")
        return self.finish_start(dom, name)

    def create(self, conn: Connection, name: str, xml: str) -> Any:
        lv = conn.lv
        snap = self.p.s("snapshot")
        saved = f"{snap}/{name}.state" if snap else ""
        if saved and os.path.exists(saved):
            try:
                conn.call(f"restoring {name} from {saved}", conn.conn.restore, saved)
                self.log.info(f"{name} restored from {saved}")
                dom = conn.lookup(name)
                if dom is not None:
                    statefile.remove(saved)
                    return dom
            except lv.libvirtError as e:
                self.log.warning(
                    f"restoring {name} from {saved} failed ({err_text(e)}); " "starting it fresh"
                )
            statefile.remove(saved)
        try:
            return conn.call(f"creating {name}", conn.conn.createXML, xml, 0)
        except lv.libvirtError as e:
            raise AgentError(ocf.ERR_GENERIC, f"failed to start {name}: {err_text(e)}") from None

    def finish_start(self, dom: Any, name: str) -> int:
        """After start/migrate_from: the guest counts as started once its monitor scripts
        and its health checks pass (retried until the deadline: a guest that has just been
        created is still booting, and a deep monitor right after start must not fail on
        that), then utilization."""
        while True:
            try:
                self.run_monitor_scripts(name)
                self.health(dom, name)
                break
            except AgentError as e:
                if self.remaining() < 1.5:
                    raise AgentError(ocf.ERR_GENERIC, f"{name} runs but {e.reason}") from None
                time.sleep(0.5)
        self.update_utilization(dom)
        return ocf.SUCCESS

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
        problem = self.config_problem()
        name: str | None
        if problem:
            name = self.cached_name() or self.fallback_name()
            if not name:
                self.log.warning(
                    f"stop: {problem}; no domain name known for this resource: "
                    "assuming it is not running here"
                )
                return ocf.SUCCESS
            self.log.warning(f"stop: {problem}; stopping domain {name} if it runs")
        else:
            try:
                name = self.domain_name()
            except AgentError:
                name = self.cached_name()
                if name is None:
                    raise
        dom_name = name
        self.wd.verdict = lambda step: self.process_verdict(
            dom_name, f"libvirt did not answer in time while {step}", stopping=True
        )
        # libvirtd may die in the middle of a stop and come back (systemd restarts it):
        # reconnect and go on, rather than fail the stop and have the host fenced
        while True:
            try:
                return self.stop_once(name)
            except Exception as e:
                if not connection_lost(e) or self.remaining() < 2.0:
                    raise
                self.log.warning(
                    f"lost libvirt while stopping {name} ({err_text(e)}); reconnecting"
                )
                self._conn = None
                time.sleep(0.5)

    def stop_once(self, name: str) -> int:
        conn = self.connect_for_stop(name)
        if conn is None:
            return ocf.SUCCESS
        dom = conn.lookup(name)
        if dom is None or self.is_off(dom):
            self.log.info(f"{name} is not running")
            return ocf.SUCCESS
        if self.p.b("save_config_on_stop"):
            self.save_config(conn, dom, name)
        if self.p.b("force_stop"):
            return self.destroy(dom, name)
        if self.p.s("snapshot"):
            return self.save_snapshot(conn, dom, name)
        return self.graceful_stop(conn, dom, name)

    def connect_for_stop(self, name: str) -> Connection | None:
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
        lv = conn.lv
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
        while True:
            now = time.monotonic()
            if now >= next_request and now < end:
                try:
                    conn.call(f"asking {name} to shut down ({mode})", dom.shutdownFlags, flags)
                    requests += 1
                except lv.libvirtError as e:
                    msg = err_text(e)
                    if (
                        err_code(e) in (VIR_ERR_NO_DOMAIN, VIR_ERR_OPERATION_INVALID)
                        or "End of file from agent socket" in msg
                    ):
                        # gone, not running, or the agent's shutdown raced its reply:
                        # maybe; the state decides.
                        self.log.debug(f"shutdown request for {name}: {msg}")
                    else:
                        self.log.warning(
                            f"graceful shutdown of {name} ({mode}) refused: "
                            f"{msg}; forcing it off"
                        )
                        return self.destroy(dom, name)
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

    def save_snapshot(self, conn: Connection, dom: Any, name: str) -> int:
        path = f"{self.p.s('snapshot')}/{name}.state"
        try:
            conn.call(f"saving {name} to {path}", dom.save, path)
            if self.wait_off(dom, self.deadline):
                self.log.info(f"{name} saved to {path}")
                return ocf.SUCCESS
        except conn.lv.libvirtError as e:
            self.log.warning(f"saving {name} to {path} failed ({err_text(e)}); forcing it off")
        statefile.remove(path)
        return self.destroy(dom, name)

    def save_config(self, conn: Connection, dom: Any, name: str) -> None:
        lv = conn.lv
        try:
            xml = conn.call(
                f"reading the definition of {name}",
                dom.XMLDesc,
                lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE,
            )
            parse_domain_xml(xml, f"the definition of {name}")
            tmp = f"{self.config}.kvmha-{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(xml)
            os.replace(tmp, self.config)
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
        problem = self.config_problem()
        name = self.cached_name() if problem else self.domain_name()
        if name is None:
            raise AgentError(ocf.ERR_INSTALLED, f"{problem}")
        conn = self.connect()
        dom = conn.lookup(name)
        if dom is None or self.is_off(dom):
            raise AgentError(ocf.ERR_GENERIC, f"migrate_to: {name} is not active here")
        if self.p.b("save_config_on_stop") and not problem:
            self.save_config(conn, dom, name)
        return migrate_to(conn, dom, name, target, self.p, self.log)

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
        if self.p.b("save_config_on_stop"):
            self.save_config(conn, dom, name)
        self.state.pop("util_cpu", None)
        self.state.pop("util_hv_memory", None)
        return self.finish_start(dom, name)

    # ------------------------------------------------------------------ validate / reload
    def validate(self) -> int:
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
    log = Logger(f"Guest({env.instance or 'kvmha'})", env.environ)
    params, errors = gp.parse(env)
    driver_problem = _check_driver(params.s("hypervisor")) if params.s("hypervisor") else None
    if driver_problem:
        errors.append(driver_problem)
    if errors:
        for e in errors[1:]:
            log.error(e)
        if action == "stop" and params.s("config") and not driver_problem:
            # never fail a stop over a value stop does not need: defaults are used
            log.warning(f"stop with invalid parameters ({'; '.join(errors)})")
        else:
            raise AgentError(ocf.ERR_CONFIGURED, errors[0])
    guest = Guest(action, env, params, log, hard_exit=hard_exit)
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
