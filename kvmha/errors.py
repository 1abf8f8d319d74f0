"""Structured errors: what went wrong, and what the admin can do about it.

Every user-facing failure in kvmha is a KvmhaError (or a subclass). The CLI prints
``message`` and, when given, ``fix`` on one line each and exits with ``exit_code``;
nothing else reaches the user as a traceback.
"""

from __future__ import annotations


class KvmhaError(Exception):
    """A failure the user can understand and act on."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message} ({self.fix})"


class UsageError(KvmhaError):
    """Bad input on the command line: an unknown name, a value out of range."""

    exit_code = 2


class CommandFailed(KvmhaError):
    """An external tool we rely on (ip, pcs, crm_mon...) failed."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        tail = output.strip().splitlines()[-3:] if output.strip() else []
        detail = "; ".join(tail) if tail else "no output"
        super().__init__(f"{argv[0]} failed (exit {returncode}): {detail}")
        self.argv = argv
        self.returncode = returncode
        self.output = output
