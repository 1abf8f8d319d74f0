"""A runner for kvmha.pcmk that expects an exact list of calls (pcs tier0 style).

    with pcmk_calls(Call(["crm_node", "-l"], "1 host1 member\n")) as runner:
        assert [m.name for m in pcmk.members()] == ["host1"]
    # leaving the block fails the test unless every expected call was made

A call not on the list, or in another order, fails at once with both argvs shown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence

from kvmha import pcmk


@dataclasses.dataclass(frozen=True)
class Call:
    argv: Sequence[str]
    stdout: str = ""
    returncode: int = 0
    stderr: str = ""


class UnexpectedCall(AssertionError):
    pass


class FakeRunner:
    def __init__(self, calls: Sequence[Call]) -> None:
        self.expected = list(calls)
        self.made: list[list[str]] = []
        self._lock = threading.Lock()

    def __call__(self, argv: Sequence[str], timeout: float) -> pcmk.Result:
        argv = list(argv)
        with self._lock:
            n = len(self.made)
            self.made.append(argv)
            if n >= len(self.expected):
                raise UnexpectedCall(f"call #{n + 1} not expected: {argv}")
            want = self.expected[n]
            if list(want.argv) != argv:
                raise UnexpectedCall(f"call #{n + 1}: expected {list(want.argv)}, got {argv}")
        assert timeout > 0, f"{argv[0]} called without a bound"
        return pcmk.Result(want.returncode, want.stdout, want.stderr)

    def assert_done(self) -> None:
        left = self.expected[len(self.made) :]
        assert not left, f"{len(left)} expected call(s) not made, first: {list(left[0].argv)}"


@contextlib.contextmanager
def pcmk_calls(*calls: Call) -> Iterator[FakeRunner]:
    runner = FakeRunner(calls)
    with pcmk.use_runner(runner):
        yield runner
    runner.assert_done()
