"""Small helpers for integration tests against a lab."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

from kvmha.process import module_argv

T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    """Poll fn until it returns something truthy; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def kvmha(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the kvmha CLI as an admin would (a separate process)."""
    return subprocess.run(
        module_argv("kvmha.tools.cli", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
