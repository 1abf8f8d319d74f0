"""No silent exit: an agent action run in-process must never end the test run.

The agent's watchdog (kvmha.agents.virt.Watchdog) ends its process with ``os._exit(rc)``
when the operation deadline passes. In a real agent run that is the point; in a unit test
that calls ``guest.main()`` in-process it would end the whole pytest run on the spot, with
the verdict as exit code (0 when no QEMU process runs) and no output. Here ``os._exit`` in
the test process raises ``SilentExit`` instead and the test fails, naming the thread, the
code and the watchdog's step. A watchdog thread's exit also interrupts the main thread
(SIGUSR1 turned into ``SilentExit``), since the main thread may be blocked by the very call
that timed out. Forked children keep the real ``os._exit``.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

_REAL_EXIT = os._exit


class SilentExit(BaseException):
    """os._exit was called inside the test process (a BaseException: the agent's
    ``except Exception`` handlers must not swallow it)."""


class ExitTrap:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.calls: list[str] = []
        self.reported = 0

    def __call__(self, rc: int) -> None:
        if os.getpid() != self.pid:  # a forked child: exit for real
            _REAL_EXIT(rc)
        thread = threading.current_thread()
        where = "".join(traceback.format_stack(limit=6)[:-1])
        msg = f"os._exit({rc}) called in the test process, thread {thread.name!r}:\n{where}"
        self.calls.append(msg)
        if thread is not threading.main_thread():
            main = threading.main_thread().ident
            if main is not None:
                signal.pthread_kill(main, signal.SIGUSR1)
            raise SystemExit  # ends this thread quietly, as os._exit would have
        raise SilentExit(msg)


@pytest.fixture(scope="session", autouse=True)
def exit_trap() -> Iterator[ExitTrap]:
    """For the whole session, so that a watchdog left running by one test and firing
    between tests is caught too (and never meets the default SIGUSR1 action)."""
    trap = ExitTrap()

    def interrupted(_sig: int, _frame: Any) -> None:
        raise SilentExit(trap.calls[-1] if trap.calls else "SIGUSR1 in the test process")

    old = signal.signal(signal.SIGUSR1, interrupted)
    os._exit = trap  # type: ignore[assignment]
    try:
        yield trap
    finally:
        os._exit = _REAL_EXIT
        signal.signal(signal.SIGUSR1, old)


@pytest.fixture(autouse=True)
def no_silent_exit(exit_trap: ExitTrap) -> Iterator[None]:
    """Fails the test in which (or before which) os._exit was called."""
    if len(exit_trap.calls) > exit_trap.reported:
        exit_trap.reported = len(exit_trap.calls)
        pytest.fail("no silent exit (before this test): " + exit_trap.calls[-1], pytrace=False)
    yield
    if len(exit_trap.calls) > exit_trap.reported:
        exit_trap.reported = len(exit_trap.calls)
        pytest.fail("no silent exit: " + exit_trap.calls[-1], pytrace=False)
