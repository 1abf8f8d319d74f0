"""Running external programs: always an argv list, never a shell, always bounded.

Owns the one ``run`` that every part uses for a program (the cluster tools, ip, qemu-img
...), and the trace that ``kvmha --verbose`` turns on: each command run, and each libvirt
call a caller reports with ``trace``, is shown as one line before it runs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Optional

from kvmha.errors import CommandFailed, KvmhaError

# What systemd gives a service (its default PATH), and what the cluster daemons must see:
# agents they start inherit it, so it must not point into a venv or pyenv.
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


_trace: Optional[Callable[[str], None]] = None


def set_trace(show: Optional[Callable[[str], None]]) -> None:
    """Show every command (and traced libvirt call) through show; None: stop showing."""
    global _trace
    _trace = show


def trace(what: str) -> None:
    """Report a call made on the user's behalf that is not a program (a libvirt call)."""
    if _trace is not None:
        _trace(what)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment like a system service's: fixed PATH, C.UTF-8, nothing inherited."""
    env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8"}
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    timeout: float = 60.0,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv; stdout and stderr captured as text. CommandFailed when check and rc != 0."""
    argv = [str(a) for a in argv]
    if _trace is not None:
        _trace(f"running: {shlex.join(argv)}")
    try:
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
    except FileNotFoundError as exc:
        raise KvmhaError(
            f"{argv[0]} is not installed", "run scripts/setup.sh, or install its package"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise KvmhaError(f"{' '.join(argv[:3])} did not finish within {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, (proc.stderr or "") + (proc.stdout or ""))
    return proc


def module_argv(module: str, *args: str) -> list[str]:
    """argv that runs one of kvmha's modules with this interpreter.

    -I keeps the caller's working directory off sys.path: run from a source checkout,
    its kvmha/ folder would otherwise hide the installed package's sub-packages.
    """
    return [sys.executable, "-I", "-m", module, *args]


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie (a zombie holds nothing any more)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # the state field follows the ")" that ends the command name
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def signal_pid(pid: int, sig: int) -> bool:
    """Send sig to pid; False when it is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True
