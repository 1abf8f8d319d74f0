"""Tests that kill surviving mutants of the agent's monitor, probe and stop decisions
(scripts/mutation.sh guest; docs/testing.md). In process, against test:///default."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmha.agents import guest, ocf, procscan

from .test_agent_lifecycle import DOMAIN, PROBE, RECURRING, Agent

libvirt = pytest.importorskip("libvirt")


@pytest.fixture(autouse=True, scope="module")
def driver_state() -> Iterator[Any]:
    """test:///default keeps its state only while a connection is open: hold one."""
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


@pytest.fixture()
def agent(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> Agent:
    return Agent(tmp_path, capfd)


def test_monitor_follows_a_changed_config_not_the_cached_name(
    agent: Agent, driver_state: Any
) -> None:
    """domain_name: the cached name counts only while the config file is unchanged."""
    assert agent("monitor", **PROBE) == ocf.NOT_RUNNING  # caches the first name
    new = agent.name + "-renamed"
    xml = DOMAIN.format(name=new)
    agent.config.write_text(xml + "\n<!-- changed: another size -->\n")
    dom = driver_state.createXML(xml, 0)
    try:
        assert agent("monitor", **RECURRING) == ocf.SUCCESS
        assert agent("stop") == ocf.SUCCESS
        assert not _exists(driver_state, new) or not dom.isActive()
    finally:
        if _exists(driver_state, new):
            driver_state.lookupByName(new).destroy()


def _exists(conn: Any, name: str) -> bool:
    try:
        conn.lookupByName(name)
        return True
    except libvirt.libvirtError:
        return False


# A probe with no config and nothing remembered finds a guest by its mark, never by a
# domain that merely carries the resource's name (issue #11 section 2): both sides are
# pinned in test_agent_contract.py (test_probe_after_migration_finds_the_guest_by_its_mark,
# test_unrelated_domain_named_like_the_resource_is_never_touched).


def test_monitor_that_cannot_connect_to_a_remote_hypervisor_says_why(agent: Agent) -> None:
    """monitor: no connection and no way to look at the QEMU processes: an error with a
    reason, never a silent code."""
    rc = agent("monitor", OCF_RESKEY_hypervisor="qemu+tcp://127.0.0.1:1/system", **RECURRING)
    assert rc == ocf.ERR_GENERIC
    assert "cannot check" in agent.reason()


def test_monitor_without_libvirt_and_without_qemu_is_not_running_without_a_reason(
    agent: Agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """monitor: libvirt down and no QEMU process: not running, and no exit reason."""
    monkeypatch.setattr(procscan, "find_qemu_pids", lambda name, deadline=None: [])
    sock = f"qemu:///system?socket={tmp_path / 'no-such-socket'}"
    rc = agent("monitor", OCF_RESKEY_hypervisor=sock, **RECURRING)
    assert rc == ocf.NOT_RUNNING
    assert "ocf-exit-reason" not in agent.reason()


def test_stop_retries_while_libvirt_is_unreachable_and_qemu_runs(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """connect_for_stop: libvirt unreachable while QEMU runs is not a verdict yet: the
    stop retries until shortly before its deadline, and succeeds when libvirt is back."""
    assert agent("start") == ocf.SUCCESS
    real = guest.Guest.connect
    calls = []

    def flaky(self: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("Failed to connect socket (libvirtd restarting)")
        return real(self)

    monkeypatch.setattr(guest.Guest, "connect", flaky)
    monkeypatch.setattr(procscan, "find_qemu_pids", lambda name, deadline=None: [4242])
    assert agent("stop") == ocf.SUCCESS, agent.reason()
    assert len(calls) >= 2
    assert (
        not _exists(agent.conn(), agent.name)
        or not agent.conn().lookupByName(agent.name).isActive()
    )
