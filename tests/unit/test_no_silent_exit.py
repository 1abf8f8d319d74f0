"""The no-silent-exit guard (tests/unit/conftest.py) itself: an os._exit in the test
process, from the main thread or from an agent watchdog thread, fails the test instead of
ending the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmha.agents import ocf
from kvmha.virt import Watchdog

UNIT = Path(__file__).resolve().parent


def test_os_exit_in_the_main_thread_raises() -> None:
    from unit.conftest import SilentExit  # type: ignore[import-not-found]

    trap = os._exit
    with pytest.raises(SilentExit, match=r"os\._exit\(0\)"):
        os._exit(0)
    trap.reported = len(trap.calls)  # type: ignore[attr-defined]  # expected here


def test_watchdog_that_fires_interrupts_the_main_thread() -> None:
    """What a hung in-process agent run does: the watchdog's os._exit(verdict) reaches the
    main thread as SilentExit rather than ending pytest with the verdict as exit code."""
    from unit.conftest import SilentExit

    Watchdog(time.monotonic() + 0.2, lambda step: (ocf.SUCCESS, ""))  # exits the process
    with pytest.raises(SilentExit, match=r"os\._exit\(0\)"):
        time.sleep(10)  # the main thread "hung in libvirt"
    trap = os._exit
    trap.reported = len(trap.calls)  # type: ignore[attr-defined]


def test_a_suite_whose_agent_run_hangs_fails_loudly(tmp_path: Path) -> None:
    """End to end: a test whose in-process watchdog fires fails, and the run goes on."""
    (tmp_path / "conftest.py").write_text("from unit.conftest import *  # noqa: F403\n")
    (tmp_path / "test_hang.py").write_text(
        "import time\n"
        "from kvmha.agents import ocf\n"
        "from kvmha.virt import Watchdog\n"
        "def test_hangs():\n"
        "    Watchdog(time.monotonic() + 0.2, lambda step: (ocf.SUCCESS, ''))\n"
        "    time.sleep(10)\n"
        "def test_after():\n"
        "    pass\n"
    )
    env = {**os.environ, "PYTHONPATH": str(UNIT.parent)}
    env.pop("CI", None)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-q", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "os._exit(0) called in the test process" in out, out
