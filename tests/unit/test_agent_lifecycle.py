"""start / stop / monitor / probe logic in process against libvirt's test:///default driver
(its state lives in this process), plus the config-unreadable probe/stop rules."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest

libvirt = pytest.importorskip("libvirt")

from kvmha.agents import guest, ocf  # noqa: E402

_names = itertools.count()
DOMAIN = """<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>
"""


class Agent:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.name = f"kvmha-unit-{os.getpid()}-{next(_names)}"
        self.config = tmp_path / f"{self.name}.xml"
        self.config.write_text(DOMAIN.format(name=self.name))
        self.capsys = capsys
        self.env = {
            "OCF_RESKEY_config": str(self.config),
            "OCF_RESKEY_hypervisor": "test:///default",
            "HA_RSCTMP": str(tmp_path / "rsc"),
            "HA_LOGFACILITY": "none",
            "OCF_RESOURCE_INSTANCE": self.name,
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
        return self.capsys.readouterr().err

    def conn(self) -> Any:
        return libvirt.open("test:///default")


@pytest.fixture()
def agent(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> Agent:
    return Agent(tmp_path, capfd)


@pytest.fixture(autouse=True, scope="module")
def test_driver_state() -> Any:
    """test:///default keeps its state only while a connection is open: hold one."""
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


PROBE = {"OCF_RESKEY_CRM_meta_interval": "0"}
RECURRING = {"OCF_RESKEY_CRM_meta_interval": "10000"}


def test_start_monitor_stop(agent: Agent) -> None:
    assert agent("monitor", **PROBE) == ocf.NOT_RUNNING
    assert agent("start") == ocf.SUCCESS
    assert agent.conn().lookupByName(agent.name).isActive()
    assert agent("monitor", **RECURRING) == ocf.SUCCESS
    assert agent("monitor", **PROBE) == ocf.SUCCESS
    assert agent("start") == ocf.SUCCESS  # idempotent
    assert agent("stop") == ocf.SUCCESS
    assert agent("monitor", **PROBE) == ocf.NOT_RUNNING
    assert agent("stop") == ocf.SUCCESS  # idempotent


def test_start_is_transient_and_undefines_persistent_copy(agent: Agent) -> None:
    conn = agent.conn()
    conn.defineXML(agent.config.read_text())
    assert agent("monitor", **PROBE) == ocf.NOT_RUNNING  # defined, shut off
    assert agent("start") == ocf.SUCCESS
    dom = conn.lookupByName(agent.name)
    assert dom.isActive() and not dom.isPersistent()
    assert agent("stop", OCF_RESKEY_force_stop="true") == ocf.SUCCESS
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(agent.name)


def test_paused_by_the_admin_is_running_degraded(agent: Agent) -> None:
    assert agent("start") == ocf.SUCCESS
    agent.conn().lookupByName(agent.name).suspend()
    assert agent("monitor", **RECURRING) == ocf.DEGRADED
    assert "paused (user)" in agent.reason()
    assert agent("monitor", **PROBE) == ocf.DEGRADED
    assert agent("stop") == ocf.SUCCESS


def test_crashed_is_an_error(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    assert agent("start") == ocf.SUCCESS
    monkeypatch.setattr(guest.Connection, "state", lambda self, dom: (6, 0))
    assert agent("monitor", **RECURRING) == ocf.ERR_GENERIC
    assert "crashed" in agent.reason()
    monkeypatch.undo()
    assert agent("stop", OCF_RESKEY_force_stop="1") == ocf.SUCCESS


def test_probe_with_unreadable_config_is_not_running(agent: Agent, tmp_path: Path) -> None:
    missing = str(tmp_path / "unmounted" / "vm.xml")
    assert agent("monitor", OCF_RESKEY_config=missing, **PROBE) == ocf.NOT_RUNNING
    assert agent("stop", OCF_RESKEY_config=missing) == ocf.SUCCESS
    # nothing marked as this resource runs here: not running, also on a recurring monitor
    assert agent("monitor", OCF_RESKEY_config=missing, **RECURRING) == ocf.NOT_RUNNING
    assert agent("start", OCF_RESKEY_config=missing) == ocf.ERR_INSTALLED


def test_unreadable_config_uses_remembered_name(agent: Agent) -> None:
    """A running guest whose config storage vanished is still found (and stopped)."""
    assert agent("start") == ocf.SUCCESS
    agent.config.rename(agent.config.with_suffix(".gone"))
    assert agent("monitor", **PROBE) == ocf.DEGRADED
    assert agent("monitor", **RECURRING) == ocf.DEGRADED
    assert "not accessible" in agent.reason()
    assert agent("stop") == ocf.SUCCESS
    with pytest.raises(libvirt.libvirtError):
        agent.conn().lookupByName(agent.name)


def test_name_cache_follows_config_changes(agent: Agent) -> None:
    assert agent("monitor", **PROBE) == ocf.NOT_RUNNING
    state = Path(agent.env["HA_RSCTMP"]) / f"kvmha-Guest-{agent.name}.state"
    assert f"name={agent.name}" in state.read_text()
    new = agent.name + "-renamed"
    agent.config.write_text(DOMAIN.format(name=new) + "\n<!-- changed -->\n")
    assert agent("start") == ocf.SUCCESS
    assert agent.conn().lookupByName(new).isActive()
    assert f"name={new}" in state.read_text()
    assert agent("stop") == ocf.SUCCESS


def test_graceful_stop_with_shutdown_mode(agent: Agent) -> None:
    assert agent("start") == ocf.SUCCESS
    # the test driver rejects the guest-agent flag: the agent must force it off instead
    assert agent("stop", OCF_RESKEY_shutdown_mode="agent") == ocf.SUCCESS
    with pytest.raises(libvirt.libvirtError):
        agent.conn().lookupByName(agent.name)


def test_shutdown_flags_reach_libvirt(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    assert agent("start") == ocf.SUCCESS
    real = libvirt.virDomain.shutdownFlags

    def spy(self: Any, flags: int = 0) -> int:
        seen.append(flags)
        return int(real(self, 0))

    monkeypatch.setattr(libvirt.virDomain, "shutdownFlags", spy)
    assert agent("stop", OCF_RESKEY_shutdown_mode="acpi,signal") == ocf.SUCCESS
    assert seen == [1 | 8]


def test_stop_forces_off_after_shutdown_timeout(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guest that ignores the graceful request is destroyed after shutdown_timeout, and
    the request is re-sent meanwhile."""
    assert agent("start") == ocf.SUCCESS
    calls: list[float] = []
    monkeypatch.setattr(
        libvirt.virDomain, "shutdownFlags", lambda self, flags=0: calls.append(flags) or 0
    )
    monkeypatch.setattr(guest, "SHUTDOWN_RESEND", 0.2)
    import time

    t0 = time.monotonic()
    assert agent("stop", OCF_RESKEY_shutdown_timeout="1") == ocf.SUCCESS
    took = time.monotonic() - t0
    assert took >= 1.0  # waited out shutdown_timeout (generous upper bound: the pytest timeout)
    assert len(calls) >= 3
    with pytest.raises(libvirt.libvirtError):
        agent.conn().lookupByName(agent.name)


def test_agent_eof_on_shutdown_is_maybe(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    assert agent("start") == ocf.SUCCESS
    real = libvirt.virDomain.shutdownFlags

    def eof(self: Any, flags: int = 0) -> int:
        real(self, 0)  # the guest does power off ...
        raise libvirt.libvirtError("internal error: End of file from agent socket")

    monkeypatch.setattr(libvirt.virDomain, "shutdownFlags", eof)
    monkeypatch.setattr(
        libvirt.virDomain, "destroy", lambda self: pytest.fail("destroy must not be needed")
    )
    assert agent("stop", OCF_RESKEY_shutdown_mode="agent") == ocf.SUCCESS


def test_snapshot_save_and_restore(agent: Agent, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    snap.mkdir()
    assert agent("start", OCF_RESKEY_snapshot=str(snap)) == ocf.SUCCESS
    assert agent("stop", OCF_RESKEY_snapshot=str(snap)) == ocf.SUCCESS
    saved = snap / f"{agent.name}.state"
    assert saved.exists()
    assert agent("start", OCF_RESKEY_snapshot=str(snap)) == ocf.SUCCESS
    assert not saved.exists()
    assert agent("monitor", **RECURRING) == ocf.SUCCESS
    assert agent("stop") == ocf.SUCCESS


def test_monitor_scripts(agent: Agent, tmp_path: Path) -> None:
    good = tmp_path / "good.sh"
    good.write_text("#!/bin/sh\nexit 0\n")
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\necho service down\nexit 3\n")
    for s in (good, bad):
        s.chmod(0o755)
    assert agent("start", OCF_RESKEY_monitor_scripts=str(good)) == ocf.SUCCESS
    assert agent("monitor", OCF_RESKEY_monitor_scripts=str(good), **RECURRING) == 0
    agent.reason()
    rc = agent("monitor", OCF_RESKEY_monitor_scripts=f"{good} {bad}", **RECURRING)
    assert rc == ocf.ERR_GENERIC
    assert "returned 3: service down" in agent.reason()
    assert agent("stop") == ocf.SUCCESS


def test_utilization_set_only_when_changed(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    calls: list[list[str]] = []
    real_run = subprocess.run

    def fake_run(argv: list[str], **kw: Any) -> Any:
        if argv[0] == "crm_resource":
            calls.append(argv)
            return subprocess.CompletedProcess(argv, 0, b"", b"")
        return real_run(argv, **kw)

    monkeypatch.setattr(subprocess, "run", fake_run)
    util = {
        "OCF_RESKEY_autoset_utilization_cpu": "true",
        "OCF_RESKEY_autoset_utilization_hv_memory": "true",
        "OCF_RESKEY_autoset_utilization_host_memory": "true",
    }
    assert agent("start", **util) == ocf.SUCCESS
    assert sorted((c[5], c[7]) for c in calls) == [
        ("cpu", "2"),
        ("host_memory", "128"),
        ("hv_memory", "128"),
    ]
    calls.clear()
    for _ in range(3):
        assert agent("monitor", **util, **RECURRING) == ocf.SUCCESS
    assert calls == []
    agent.conn().lookupByName(agent.name).setVcpusFlags(1, 0)
    assert agent("monitor", **util, **RECURRING) == ocf.SUCCESS
    assert [(c[5], c[7]) for c in calls] == [("cpu", "1")]
    assert agent("stop") == ocf.SUCCESS


def test_unset_utilization_removes_and_wins(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kw: Any) -> Any:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(subprocess, "run", fake_run)
    env = {
        "OCF_RESKEY_autoset_utilization_cpu": "true",
        "OCF_RESKEY_unset_utilization_cpu": "true",
        "OCF_RESKEY_unset_utilization_host_memory": "true",
    }
    assert agent("start", **env) == ocf.SUCCESS
    assert sorted(c[4:6] for c in calls) == [
        ["--delete-parameter", "cpu"],
        ["--delete-parameter", "host_memory"],
    ]
    assert agent("stop") == ocf.SUCCESS


def test_double_start_guard_refuses(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmha.agents import peers

    monkeypatch.setattr(peers, "peer_uris", lambda p, env, budget, log: ["test:///default"])
    conn = agent.conn()
    conn.createXML(agent.config.read_text(), 0)  # "the peer" runs it
    # the local lookup would find it too; make this host look empty
    monkeypatch.setattr(guest.Connection, "lookup", lambda self, name: None)
    assert agent("start") == ocf.ERR_GENERIC
    assert "already running on test:///default" in agent.reason()
    monkeypatch.undo()
    conn.lookupByName(agent.name).destroy()


def test_peer_uris_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmha.agents import guest_params as gp
    from kvmha.agents import peers

    monkeypatch.setattr(peers, "cluster_nodes", lambda t: ["h1", "h2", "h3"])
    env = ocf.Env({"OCF_RESKEY_CRM_meta_on_node": "h2", "OCF_RESKEY_migration_transport": "tcp"})
    params, errors = gp.parse(ocf.Env({**env.environ, "OCF_RESKEY_config": "/x.xml"}))
    assert not errors
    log = ocf.Logger("t", {"HA_LOGFACILITY": "none"})
    assert peers.peer_uris(params, env, 1.0, log) == [
        "qemu+tcp://h1/system",
        "qemu+tcp://h3/system",
    ]
    params.values["peer_uris"] = "qemu+ssh://%n/system"
    assert peers.peer_uris(params, env, 1.0, log) == [
        "qemu+ssh://h1/system",
        "qemu+ssh://h3/system",
    ]
    params.values["peer_uris"] = "none"
    assert peers.peer_uris(params, env, 1.0, log) == []


def test_migrate_to_without_target(agent: Agent) -> None:
    assert agent("start") == ocf.SUCCESS
    assert agent("migrate_to") == ocf.ERR_CONFIGURED
    assert "migrate_target" in agent.reason()
    rc = agent(
        "migrate_to",
        OCF_RESKEY_CRM_meta_migrate_target="other",
        OCF_RESKEY_remoteuri="test:///default",
    )
    assert rc == ocf.ERR_GENERIC  # the test driver cannot migrate; a reason, no traceback
    assert "ocf-exit-reason:" in agent.reason()
    assert agent("stop") == ocf.SUCCESS


def test_migrate_from_waits_for_the_domain(agent: Agent) -> None:
    agent.conn().createXML(agent.config.read_text(), 0)  # arrived by migration
    assert agent("migrate_from", OCF_RESKEY_CRM_meta_migrate_source="h1") == ocf.SUCCESS
    assert agent("stop") == ocf.SUCCESS
    assert agent("migrate_from", OCF_RESKEY_CRM_meta_timeout="2000") == ocf.ERR_GENERIC
    assert "not running here" in agent.reason()


def test_guard_asks_only_member_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lost (dead, being fenced) host is not asked: it would only cost a timeout."""
    from kvmha import pcmk
    from kvmha.agents import peers

    out = "1 host1 member\n2 host2 lost\n3 host3 member\n"
    calls: list[list[str]] = []

    def runner(argv: Any, timeout: float) -> pcmk.Result:
        calls.append(list(argv))
        return pcmk.Result(0, out)

    with pcmk.use_runner(runner):
        assert peers.cluster_nodes(1.0) == ["host1", "host3"]
    assert calls == [["crm_node", "-l"]]
    with pcmk.use_runner(lambda argv, timeout: pcmk.Result(102, "", "not connected")):
        assert peers.cluster_nodes(1.0) is None
