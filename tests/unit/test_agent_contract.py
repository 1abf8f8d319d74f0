"""The return-code contract of docs/agent.md, row by row, in process against libvirt's
test:///default driver (whose state lives in this process) and faithful fakes where the
test driver cannot produce a state (I/O error pauses, panics, post-copy failures)."""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

libvirt = pytest.importorskip("libvirt")

from kvmha import virt  # noqa: E402
from kvmha.agents import guest, ocf  # noqa: E402

_ids = itertools.count()
DOMAIN = """<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>
"""
PROBE = {"OCF_RESKEY_CRM_meta_interval": "0"}
RECURRING = {"OCF_RESKEY_CRM_meta_interval": "10000"}


class Agent:
    """One resource whose id (vm_<name>) differs from its domain's name, as usual."""

    def __init__(self, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
        n = next(_ids)
        self.name = f"kvmha-contract-{os.getpid()}-{n}"
        self.rsc = f"vm_{self.name}"
        self.config = tmp_path / f"{self.name}.xml"
        self.config.write_text(DOMAIN.format(name=self.name))
        self.capfd = capfd
        self.log = tmp_path / "agent.log"
        self.env = {
            "OCF_RESKEY_config": str(self.config),
            "OCF_RESKEY_hypervisor": "test:///default",
            "HA_RSCTMP": str(tmp_path / "rsc"),
            "HA_LOGFACILITY": "none",
            "HA_LOGFILE": str(self.log),
            "OCF_RESOURCE_INSTANCE": self.rsc,
            "OCF_RESKEY_peer_uris": "none",
            "OCF_RESKEY_autoset_utilization_cpu": "false",
            "OCF_RESKEY_autoset_utilization_hv_memory": "false",
            "OCF_RESKEY_autoset_utilization_host_memory": "false",
            "OCF_RESKEY_CRM_meta_timeout": "60000",
        }

    def __call__(self, action: str, **extra: str) -> int:
        env = dict(self.env)
        env.update(extra)
        return guest.main(["Guest", action], env)

    def reason(self) -> str:
        return self.capfd.readouterr().err

    def conn(self) -> Any:
        return libvirt.open("test:///default")

    def dom(self) -> Any:
        return self.conn().lookupByName(self.name)

    def forget(self) -> None:
        """This host has never seen the resource (it arrived by live migration)."""
        for f in Path(self.env["HA_RSCTMP"]).glob("*"):
            f.unlink()

    def logged(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture()
def agent(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> Iterator[Agent]:
    a = Agent(tmp_path, capfd)
    yield a
    try:
        d = a.conn().lookupByName(a.name)
        if d.isActive():
            d.destroy()
    except libvirt.libvirtError:
        pass


@pytest.fixture(autouse=True, scope="module")
def test_driver_state() -> Iterator[Any]:
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


@pytest.fixture(autouse=True)
def no_hard_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs answer the watchdog's verdict; they never end the process."""

    def refuse(code: int) -> None:
        raise AssertionError(f"os._exit({code}) in an in-process agent run")

    monkeypatch.setattr(os, "_exit", refuse)


def state_is(monkeypatch: pytest.MonkeyPatch, state: int, reason: int) -> None:
    monkeypatch.setattr(guest.Connection, "state", lambda self, dom: (state, reason))


# ------------------------------------------------------------------ monitor: state reasons
@pytest.mark.parametrize(
    ("state", "reason", "rc", "text"),
    [
        (virt.RUNNING, 1, ocf.SUCCESS, ""),
        (virt.RUNNING, 11, ocf.ERR_GENERIC, "postcopy_failed"),
        (virt.BLOCKED, 0, ocf.SUCCESS, ""),
        (virt.PAUSED, 1, ocf.DEGRADED, "paused (user)"),
        (virt.PAUSED, 2, ocf.DEGRADED, "paused (migration)"),
        (virt.PAUSED, 5, ocf.ERR_GENERIC, "paused (ioerror)"),
        (virt.PAUSED, 6, ocf.ERR_GENERIC, "paused (watchdog)"),
        (virt.PAUSED, 10, ocf.ERR_GENERIC, "paused (crashed)"),
        (virt.PAUSED, 13, ocf.ERR_GENERIC, "paused (postcopy_failed)"),
        (virt.CRASHED, 1, ocf.ERR_GENERIC, "crashed (panicked)"),
        (virt.CRASHED, 0, ocf.ERR_GENERIC, "crashed"),
        (virt.PMSUSPENDED, 0, ocf.DEGRADED, "pmsuspended"),
        (virt.SHUTOFF, 1, ocf.NOT_RUNNING, ""),
    ],
)
@pytest.mark.parametrize("kind", ["probe", "recurring", "deep"])
def test_monitor_by_state_and_reason(
    agent: Agent,
    monkeypatch: pytest.MonkeyPatch,
    state: int,
    reason: int,
    rc: int,
    text: str,
    kind: str,
) -> None:
    assert agent("start") == ocf.SUCCESS
    agent.reason()
    state_is(monkeypatch, state, reason)
    extra = dict(PROBE if kind == "probe" else RECURRING)
    if kind == "deep":
        extra["OCF_CHECK_LEVEL"] = "10"
    assert agent("monitor", **extra) == rc
    assert text in agent.reason()


def test_monitor_absent_is_not_running(agent: Agent) -> None:
    assert agent("monitor", **PROBE) == ocf.NOT_RUNNING
    assert agent("monitor", **RECURRING) == ocf.NOT_RUNNING


# ------------------------------------------------------------------ monitor: broken config
@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda p: p.write_text("<domain type='test'><name>half"), "not well-formed"),
        (lambda p: p.write_text("<network><name>x</name></network>"), "not a libvirt domain"),
        (lambda p: p.write_text(""), "not well-formed"),
        (lambda p: p.unlink(), "not accessible"),
    ],
)
@pytest.mark.parametrize("extra", [PROBE, RECURRING])
def test_broken_config_under_a_running_guest_is_degraded_never_6(
    agent: Agent, damage: Any, why: str, extra: dict[str, str]
) -> None:
    assert agent("start") == ocf.SUCCESS
    good = agent.config.read_text()
    damage(agent.config)
    agent.reason()
    assert agent("monitor", **extra) == ocf.DEGRADED
    assert why in agent.reason()
    assert agent.dom().isActive()  # the guest keeps running
    # the admin finishes the edit: the degraded state clears
    agent.config.write_text(good)
    assert agent("monitor", **extra) == ocf.SUCCESS
    assert agent("stop") == ocf.SUCCESS


@pytest.mark.parametrize("action", ["monitor", "reload-agent"])
def test_invalid_parameter_under_a_running_guest_is_never_6(agent: Agent, action: str) -> None:
    assert agent("start") == ocf.SUCCESS
    agent.reason()
    rc = agent(action, OCF_RESKEY_health_timeout="zero", **RECURRING)
    assert rc == (ocf.DEGRADED if action == "monitor" else ocf.SUCCESS)
    assert "health_timeout" in agent.reason()
    assert agent("start", OCF_RESKEY_health_timeout="zero") == ocf.ERR_CONFIGURED
    assert agent("validate-all", OCF_RESKEY_health_timeout="zero") == ocf.ERR_CONFIGURED


def test_missing_config_parameter_probe_is_not_6(agent: Agent) -> None:
    env = dict(agent.env)
    del env["OCF_RESKEY_config"]
    rc = guest.main(["Guest", "monitor"], {**env, **PROBE})
    assert rc == ocf.NOT_RUNNING


# ------------------------------------------------------------------ identity
def test_mark_is_written_at_start(agent: Agent) -> None:
    assert agent("start") == ocf.SUCCESS
    assert virt.read_mark(libvirt, agent.dom()) == agent.rsc
    assert virt.MARK_NS not in agent.config.read_text()  # the admin's file is left alone


def test_probe_after_migration_finds_the_guest_by_its_mark(agent: Agent) -> None:
    """resource id != domain name, config unreadable, nothing remembered on this host
    (the guest arrived by live migration): the probe finds it, the stop stops it."""
    assert agent("start") == ocf.SUCCESS
    agent.forget()
    agent.config.rename(agent.config.with_suffix(".unmounted"))
    agent.reason()
    assert agent("monitor", **PROBE) == ocf.DEGRADED
    assert "not accessible" in agent.reason()
    agent.forget()
    assert agent("monitor", **RECURRING) == ocf.DEGRADED
    agent.forget()
    assert agent("stop") == ocf.SUCCESS
    assert not _exists(agent)


def _exists(agent: Agent) -> bool:
    try:
        agent.dom()
        return True
    except libvirt.libvirtError:
        return False


def test_unrelated_domain_named_like_the_resource_is_never_touched(agent: Agent) -> None:
    """A domain whose name is the resource id but that carries no mark is not ours."""
    other = DOMAIN.format(name=agent.rsc)
    conn = agent.conn()
    dom = conn.createXML(other, 0)
    try:
        agent.config.rename(agent.config.with_suffix(".unmounted"))
        assert agent("monitor", **PROBE) == ocf.NOT_RUNNING
        assert agent("monitor", **RECURRING) == ocf.NOT_RUNNING
        assert agent("stop") == ocf.SUCCESS
        assert dom.isActive()
        assert agent("stop", OCF_RESKEY_force_stop="true") == ocf.SUCCESS
        assert dom.isActive()
    finally:
        dom.destroy()


def test_stop_with_unreadable_config_and_no_known_name_stops_only_marked(
    agent: Agent,
) -> None:
    assert agent("start") == ocf.SUCCESS
    conn = agent.conn()
    bystander = conn.createXML(DOMAIN.format(name=agent.name + "-bystander"), 0)
    try:
        agent.forget()
        agent.config.unlink()
        assert agent("stop") == ocf.SUCCESS
        assert not _exists(agent) or not agent.dom().isActive()
        assert bystander.isActive()
        # and once it is gone, stop is idempotent
        agent.forget()
        assert agent("stop") == ocf.SUCCESS
        assert agent("monitor", **PROBE) == ocf.NOT_RUNNING
    finally:
        bystander.destroy()


def test_migrate_from_marks_a_guest_that_arrives_without_a_mark(agent: Agent) -> None:
    conn = agent.conn()
    dom = conn.createXML(agent.config.read_text(), 0)  # "arrived" from an older agent
    assert virt.read_mark(libvirt, dom) is None
    assert agent("migrate_from", OCF_RESKEY_CRM_meta_migrate_source="h1") == ocf.SUCCESS
    assert virt.read_mark(libvirt, dom) == agent.rsc


# ------------------------------------------------------------------ without libvirt
@pytest.fixture()
def fake_qemu() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-c", "import time; time.sleep(120)", "-name", "guest=x"],
        executable=sys.executable,
    )
    time.sleep(0.1)
    yield proc
    proc.kill()
    proc.wait()


def _status(path: Path, pid: int, name: str, mark: str | None) -> None:
    md = (
        f"<metadata><kvmha:resource xmlns:kvmha='{virt.MARK_NS}' id='{mark}'/></metadata>"
        if mark
        else ""
    )
    path.write_text(
        f"<domstatus state='running' pid='{pid}'><domain type='kvm'><name>{name}</name>"
        f"<uuid>00000000-0000-0000-0000-000000000001</uuid>{md}</domain></domstatus>"
    )


def test_libvirt_down_probe_finds_the_marked_guest_in_libvirtds_status_files(
    agent: Agent,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_qemu: subprocess.Popen[bytes],
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(guest, "RUNTIME_DIR", str(run))
    down = {"OCF_RESKEY_hypervisor": f"qemu:///system?socket={tmp_path}/none"}
    agent.config.unlink()  # and the config is unreadable, nothing remembered
    assert agent("monitor", **PROBE, **down) == ocf.NOT_RUNNING
    # an unrelated domain named like the resource: still not ours
    _status(run / "a.xml", fake_qemu.pid, agent.rsc, None)
    assert agent("monitor", **PROBE, **down) == ocf.NOT_RUNNING
    assert agent("stop", OCF_RESKEY_CRM_meta_timeout="4000", **down) == ocf.SUCCESS
    # the guest of this resource, under another name
    _status(run / "b.xml", fake_qemu.pid, "web", agent.rsc)
    assert agent("monitor", **PROBE, **down) == ocf.DEGRADED
    agent.reason()
    assert agent("stop", OCF_RESKEY_CRM_meta_timeout="4000", **down) == ocf.ERR_GENERIC
    assert "still runs" in agent.reason()
    fake_qemu.kill()
    fake_qemu.wait()
    assert agent("monitor", **PROBE, **down) == ocf.NOT_RUNNING
    assert agent("stop", OCF_RESKEY_CRM_meta_timeout="4000", **down) == ocf.SUCCESS


def test_non_qemu_hypervisor_is_refused_and_never_guessed(agent: Agent) -> None:
    assert agent("validate-all", OCF_RESKEY_hypervisor="lxc:///") == ocf.ERR_CONFIGURED
    assert "lxc driver is not supported" in agent.reason()
    assert agent("start", OCF_RESKEY_hypervisor="lxc:///") == ocf.ERR_CONFIGURED
    # a probe without an answer from lxc's libvirt cannot say "not running"
    rc = agent("monitor", OCF_RESKEY_hypervisor="lxc:///system?socket=/nonexistent", **PROBE)
    assert rc == ocf.ERR_GENERIC


# ------------------------------------------------------------------ stop
@pytest.mark.parametrize("how", ["suspend", "crashed", "pmsuspended"])
def test_stop_destroys_paused_crashed_or_suspended_at_once(
    agent: Agent, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    assert agent("start") == ocf.SUCCESS
    dom = agent.dom()
    calls: list[str] = []
    real_shutdown = guest.Guest.graceful_stop

    def no_graceful(self: Any, *a: Any) -> int:
        calls.append("graceful")
        return real_shutdown(self, *a)

    monkeypatch.setattr(guest.Guest, "graceful_stop", no_graceful)
    if how == "suspend":
        dom.suspend()
    else:
        st = virt.CRASHED if how == "crashed" else virt.PMSUSPENDED
        real_state = guest.Connection.state

        def fake(self: Any, d: Any) -> tuple[int, int]:
            s = real_state(self, d)
            return s if s[0] == virt.SHUTOFF else (st, 0)

        monkeypatch.setattr(guest.Connection, "state", fake)
    assert agent("stop", OCF_RESKEY_shutdown_timeout="3600") == ocf.SUCCESS
    assert calls == []
    assert "forcing it off at once" in agent.logged()
    assert not _exists(agent)


def test_destroy_that_never_confirms_off_fails_the_stop(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert agent("start") == ocf.SUCCESS
    state_is(monkeypatch, virt.RUNNING, 1)
    rc = agent("stop", OCF_RESKEY_force_stop="true", OCF_RESKEY_CRM_meta_timeout="4000")
    assert rc == ocf.ERR_GENERIC
    assert "still running after forced power off" in agent.reason()


def test_stop_retries_after_libvirt_restarts(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    assert agent("start") == ocf.SUCCESS
    real = guest.Guest.stop_once
    calls: list[int] = []

    class Lost(libvirt.libvirtError):  # type: ignore[misc]
        def __init__(self) -> None:
            Exception.__init__(self, "End of file while reading data")

        def get_error_code(self) -> int:
            return virt.VIR_ERR_SYSTEM_ERROR

        def get_error_domain(self) -> int:
            return virt.VIR_FROM_RPC

        def get_error_message(self) -> str:
            return "End of file while reading data: Input/output error"

    def flaky(self: Any, known: Any, *, by_mark: bool) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise Lost()
        return real(self, known, by_mark=by_mark)

    monkeypatch.setattr(guest.Guest, "stop_once", flaky)
    assert agent("stop") == ocf.SUCCESS
    assert len(calls) == 2
    assert "retrying" in agent.logged()
    assert not _exists(agent)


def test_guest_agent_shutdown_failure_falls_back_to_acpi(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest agent does not answer: the stop asks by ACPI next (the guest powers off
    on it), a graceful stop, not a destroy.  The test driver takes only flags 0, so the
    request is faked: the agent flag fails like QEMU's, ACPI shuts the domain down."""
    assert agent("start") == ocf.SUCCESS
    asked: list[int] = []
    real_request = guest.Request

    def request(lv: Any, fn: Any, flags: int) -> Any:
        asked.append(flags)

        def do(f: int) -> None:
            if f & 2:
                raise libvirt.libvirtError("Guest agent is not responding: timeout")
            fn(0)

        return real_request(lv, do, flags)

    monkeypatch.setattr(guest, "Request", request)
    assert agent("stop", OCF_RESKEY_shutdown_mode="agent") == ocf.SUCCESS
    log = agent.logged()
    assert asked[:2] == [2, 1]
    assert "trying ACPI" in log and "shut down gracefully" in log
    assert "forcing it off" not in log


def test_graceful_request_that_blocks_does_not_hold_the_stop(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shutdown request that never returns (a hung guest agent): the stop still forces
    the guest off at the end of its window and succeeds."""
    assert agent("start") == ocf.SUCCESS
    import threading

    never = threading.Event()
    real_request = guest.Request

    def hanging(lv: Any, fn: Any, *args: Any) -> Any:
        return real_request(lv, lambda *a: never.wait(120), *args)

    monkeypatch.setattr(guest, "Request", hanging)
    try:
        assert agent("stop", OCF_RESKEY_shutdown_timeout="1") == ocf.SUCCESS
        assert "forcing it off" in agent.logged()
        assert not _exists(agent)
    finally:
        never.set()


# ------------------------------------------------------------------ snapshot
def test_failed_snapshot_save_shuts_down_gracefully(agent: Agent, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    assert agent("start", OCF_RESKEY_snapshot=str(snap)) == ocf.SUCCESS
    snap.rmdir()  # the save cannot write its file
    assert agent("stop", OCF_RESKEY_snapshot=str(snap)) == ocf.SUCCESS
    log = agent.logged()
    assert "shutting it down instead" in log and "shut down gracefully" in log
    assert not _exists(agent)


def test_snapshot_save_and_restore(agent: Agent, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    assert agent("start", OCF_RESKEY_snapshot=str(snap)) == ocf.SUCCESS
    assert agent("stop", OCF_RESKEY_snapshot=str(snap)) == ocf.SUCCESS
    saved = snap / f"{agent.name}.state"
    assert saved.exists()
    assert agent("start", OCF_RESKEY_snapshot=str(snap)) == ocf.SUCCESS
    assert not saved.exists() and agent.dom().isActive()
    assert virt.read_mark(libvirt, agent.dom()) == agent.rsc
    assert agent("stop") == ocf.SUCCESS


def test_failed_restore_is_an_error_and_keeps_the_state_file(agent: Agent, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    saved = snap / f"{agent.name}.state"
    saved.write_bytes(b"not a libvirt save image")
    assert agent("start", OCF_RESKEY_snapshot=str(snap)) == ocf.ERR_GENERIC
    assert "the saved state is kept" in agent.reason()
    assert saved.read_bytes() == b"not a libvirt save image"
    assert not _exists(agent)


# ------------------------------------------------------------------ undefine, save_config
def test_undefine_backs_up_the_definition(agent: Agent, tmp_path: Path) -> None:
    conn = agent.conn()
    conn.defineXML(agent.config.read_text())
    assert agent("start") == ocf.SUCCESS
    assert not agent.dom().isPersistent()
    backups = list((tmp_path / "rsc").glob(f"*.{agent.name}.xml"))
    assert len(backups) == 1 and f"<name>{agent.name}</name>" in backups[0].read_text()
    assert agent("stop") == ocf.SUCCESS


def test_save_config_on_stop_keeps_mode_owner_and_symlink(agent: Agent, tmp_path: Path) -> None:
    real = tmp_path / "shared" / "guest.xml"
    real.parent.mkdir()
    real.write_text(agent.config.read_text())
    real.chmod(0o640)
    link = tmp_path / "link.xml"
    link.symlink_to(real)
    env = {"OCF_RESKEY_config": str(link), "OCF_RESKEY_save_config_on_stop": "true"}
    before = real.stat()
    assert agent("start", **env) == ocf.SUCCESS
    assert agent("stop", **env) == ocf.SUCCESS
    assert link.is_symlink() and os.readlink(link) == str(real)
    after = real.stat()
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert "saved the definition" in agent.logged()
    assert f"<name>{agent.name}</name>" in real.read_text()
    assert not list(real.parent.glob("*.kvmha-*"))


def test_save_config_on_stop_never_writes_into_an_empty_mount_point(
    agent: Agent, tmp_path: Path
) -> None:
    assert agent("start", OCF_RESKEY_save_config_on_stop="true") == ocf.SUCCESS
    mount = agent.config.parent
    agent.config.unlink()  # the storage went away under the running guest
    assert agent("stop", OCF_RESKEY_save_config_on_stop="true") == ocf.SUCCESS
    assert not agent.config.exists()
    assert not [p for p in mount.iterdir() if p.name.startswith(agent.name)]


# ------------------------------------------------------------------ the watchdog in process
def test_a_hung_call_answers_the_verdict_without_os_exit(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert agent("start") == ocf.SUCCESS

    def hang(self: Any, name: str) -> Any:
        for _ in range(3000):  # 30 s, in steps the watchdog's interrupt can break
            time.sleep(0.01)

    monkeypatch.setattr(guest.Connection, "lookup", hang)
    agent.reason()
    t0 = time.monotonic()
    rc = agent("monitor", OCF_RESKEY_CRM_meta_timeout="2000", **RECURRING)
    # libvirt "hangs" on a driver that has no QEMU processes to look at: the watchdog's
    # verdict is an error that says what hung, returned, not an os._exit
    assert rc == ocf.ERR_GENERIC
    assert "did not answer in time while" in agent.reason()
    assert time.monotonic() - t0 < 25  # answered at its deadline, not after the hang


def test_write_config_refuses_a_missing_file(tmp_path: Path) -> None:
    mount = tmp_path / "mnt"
    mount.mkdir()
    with pytest.raises(FileNotFoundError):
        guest.write_config(str(mount / "vm.xml"), "<domain/>")
    assert list(mount.iterdir()) == []


def test_stop_without_the_config_parameter_stops_the_marked_guest(agent: Agent) -> None:
    assert agent("start") == ocf.SUCCESS
    agent.forget()
    env = dict(agent.env)
    del env["OCF_RESKEY_config"]
    assert guest.main(["Guest", "stop"], env) == ocf.SUCCESS
    assert not _exists(agent)


def test_migrate_to_with_a_half_written_config_uses_the_remembered_name(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmha.agents import migration

    seen: list[str] = []
    monkeypatch.setattr(
        migration, "migrate_to", lambda conn, dom, name, target, p, log: seen.append(name) or 0
    )
    assert agent("start") == ocf.SUCCESS
    agent.config.write_text("<domain><name>half")
    assert agent("migrate_to", OCF_RESKEY_CRM_meta_migrate_target="h2") == ocf.SUCCESS
    assert seen == [agent.name]


# ------------------------------------------------------------------ logging conventions
def test_ha_logtag_and_trace_ra_of_one_operation(agent: Agent, tmp_path: Path) -> None:
    varlib = tmp_path / "varlib"
    assert agent("start", HA_LOGTAG="mytag") == ocf.SUCCESS
    assert "mytag[" in agent.logged()
    env = {"OCF_RESKEY_trace_ra": "1", "HA_VARLIB": str(varlib), "OCF_RESOURCE_TYPE": "Guest"}
    assert agent("monitor", **RECURRING, **env) == ocf.SUCCESS
    traces = list((varlib / "trace_ra" / "Guest").glob(f"{agent.rsc}.monitor.*"))
    assert len(traces) == 1
    text = traces[0].read_text()
    assert "DEBUG: trace of monitor" in text and "OCF_RESKEY_config=" in text
    explicit = tmp_path / "one.trace"
    assert agent("stop", OCF_TRACE_RA="1", OCF_TRACE_FILE=str(explicit)) == ocf.SUCCESS
    assert "trace of stop" in explicit.read_text()
    # without tracing, no debug lines
    assert "DEBUG" not in agent.logged()
