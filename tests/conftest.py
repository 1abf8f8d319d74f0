"""Shared fixtures: real labs (1 and 3 hosts) for the integration tests.

A lab is brought up once per session and always taken down at the end, also when a
test fails; a failing test gets the last lines of every host's logs in its report.
A missing component makes the lab fixture fail: it is never a silent skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmha.tools.lab.lab import Lab

# KVMHA_TEST_LABS lets several checkouts run their labs side by side (labs coexist by labdir)
TEST_LABS = Path(os.environ.get("KVMHA_TEST_LABS", "/var/lib/kvmha-test"))


def _progress(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


def make_lab(name: str, hosts: int, guests: int, agent: str = "Guest") -> Iterator[Lab]:
    labdir = TEST_LABS / name
    Lab(labdir, _progress).down(purge=True)  # leftovers of an interrupted run
    lab = Lab(labdir, _progress)
    try:
        lab.up(hosts, guests, agent)
        yield lab
    finally:
        Lab(labdir, _progress).down()


@pytest.fixture(scope="session")
def lab3() -> Iterator[Lab]:
    """Three hosts, four guests under Pacemaker, fencing through the lab power switch."""
    yield from make_lab("lab3", 3, 4)


@pytest.fixture(scope="module")
def lab1() -> Iterator[Lab]:
    """One host with one guest."""
    yield from make_lab("lab1", 1, 1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for value in funcargs.values():
            if isinstance(value, Lab) and value.is_configured():
                for host in value.cfg.host_names():
                    try:
                        # notices and worse: Pacemaker's info lines would drown them
                        lines = value.logs(host, 400).splitlines()
                        keep = [x for x in lines if " info: " not in x and "debug" not in x]
                        text = "\n".join(keep[-80:])
                    except Exception as exc:  # a report must never hide the failure
                        text = f"(could not read logs: {exc})"
                    report.sections.append((f"lab logs: {host}", text))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the shared 3-host lab last: it is brought up once and then kept, and the
    other labs and QEMU probes should not run beside it on a 2-core machine."""
    items.sort(key=lambda item: "lab3" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="module")
def fence_lab() -> Iterator[tuple[Lab, Any]]:
    """Three hosts with the fence listener, three guests, and a guest cluster (guest1..3)."""
    from kvmha.tools.lab.guestcluster import GuestCluster

    labs = make_lab("fence3", 3, 3)
    lab = next(labs)
    gc = GuestCluster(lab)
    try:
        gc.up()
        yield lab, gc
    finally:
        gc.down()
        labs.close()


REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = {
    "kvmha": "",
    "agents": "agents",
    "fence": "fence",
    "netcfg": "netcfg",
    "tools": "tools",
}


def pytest_sessionstart(session: pytest.Session) -> None:
    """The tests import kvmha as installed for /usr/bin/python3 (the agents run under it):
    refuse to test a stale copy of this checkout."""
    import kvmha

    installed = Path(kvmha.__file__).parent
    stale = []
    for src, sub in SOURCE_DIRS.items():
        for f in (REPO / src).rglob("*.py"):
            twin = installed / sub / f.relative_to(REPO / src)
            if not twin.exists() or twin.read_bytes() != f.read_bytes():
                stale.append(str(f.relative_to(REPO)))
    if stale:
        pytest.exit(
            f"the installed kvmha differs from this checkout ({stale[0]}, ...): "
            "run scripts/setup.sh",
            returncode=2,
        )
