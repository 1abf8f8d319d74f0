"""Shared fixtures: real labs (1 and 3 hosts) for the integration tests.

A lab is brought up once per session and always taken down at the end, also when a
test fails; a failing test gets the last lines of every host's logs in its report.
A missing component makes the lab fixture fail: it is never a silent skip. In CI
(CI=true) every skip fails, module-level skips included, except the few in
CI_ALLOWED_SKIPS (a test that does not apply, with the reason why).
"""

from __future__ import annotations

import fnmatch
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


# ---- skips fail in CI --------------------------------------------------------------------
# (node id pattern, text in the skip reason) -> why the skip is not a missing component.
# Keep this short: anything a CI machine can install belongs in scripts/setup.sh instead.
CI_ALLOWED_SKIPS: dict[tuple[str, str], str] = {
    ("tests/unit/test_agent_validate.py::test_bad_integer[[]-1-*", "no lower bound"): (
        "-1 is a valid value of an integer parameter that has no lower bound: the case "
        "does not exist, nothing is missing"
    ),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_reason(longrepr: object) -> str:
    """The reason of a skip report (pytest keeps (path, line, 'Skipped: reason'))."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def allowed_skip(nodeid: str, reason: str) -> str | None:
    """Why this skip is accepted in CI, or None when it must fail there."""
    for (pattern, text), why in CI_ALLOWED_SKIPS.items():
        if fnmatch.fnmatchcase(nodeid, pattern) and text in reason:
            return why
    return None


def ci_skip_message(nodeid: str, reason: str) -> str:
    return (
        f"skipped in CI: {nodeid}: {reason}\n"
        "A skip in CI hides a missing component: make scripts/setup.sh install what the "
        "test needs, or add the test to CI_ALLOWED_SKIPS in tests/conftest.py with the "
        "reason it does not apply."
    )


class SkippedInCI(pytest.Item):
    """Stands for a module whose collection was skipped in CI and fails in its place, so
    the run goes on and the failure is counted with the others."""

    def __init__(self, *, message: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.message = message

    def runtest(self) -> None:
        pytest.fail(self.message, pytrace=False)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, self.name


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not (in_ci() and report.skipped):
        return
    reason = skip_reason(report.longrepr)
    if allowed_skip(report.nodeid, reason) is not None:
        return
    report.outcome = "passed"
    report.longrepr = None
    report.result = [
        SkippedInCI.from_parent(
            collector,
            name="module-skipped-in-ci",
            message=ci_skip_message(report.nodeid, reason),
        )
    ]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report.longrepr)
        if allowed_skip(report.nodeid, reason) is None:
            report.outcome = "failed"
            report.longrepr = ci_skip_message(report.nodeid, reason)
    if report.failed:
        for lab in _labs_of(getattr(item, "funcargs", {})):
            for host in lab.cfg.host_names():
                try:
                    text = _log_tails(lab.logs(host, 400))
                except Exception as exc:  # a report must never hide the failure
                    text = f"(could not read logs: {exc})"
                report.sections.append((f"lab logs: {lab.cfg.labdir.name} {host}", text))


def _labs_of(funcargs: dict[str, Any]) -> list[Lab]:
    """The configured labs a test used: fixtures give a Lab or a tuple holding one."""
    found: list[Lab] = []
    for value in funcargs.values():
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, Lab) and v.is_configured() and v not in found:
                found.append(v)
    return found


def _log_tails(text: str, per_file: int = 15) -> str:
    """The last lines of each log file in Lab.logs' output, notices and worse (Pacemaker's
    info lines would drown them), so a quiet file is not pushed out by a busy one."""
    out: list[str] = []
    for chunk in text.split("==> ")[1:]:
        head, _, body = chunk.partition("\n")
        keep = [x for x in body.splitlines() if " info: " not in x and "debug" not in x]
        out += [f"==> {head}", *keep[-per_file:]]
    return "\n".join(out)


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
    # scripts/mutation.py runs the tests against a mutant of the installed copy of these
    mutated = set(filter(None, os.environ.get("KVMHA_MUTATED_FILES", "").split(",")))
    stale = []
    for src, sub in SOURCE_DIRS.items():
        for f in (REPO / src).rglob("*.py"):
            if str(f.relative_to(REPO)) in mutated:
                continue
            twin = installed / sub / f.relative_to(REPO / src)
            if not twin.exists() or twin.read_bytes() != f.read_bytes():
                stale.append(str(f.relative_to(REPO)))
    if stale:
        pytest.exit(
            f"the installed kvmha differs from this checkout ({stale[0]}, ...): "
            "run scripts/setup.sh",
            returncode=2,
        )
