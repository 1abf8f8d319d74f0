"""The install guide's own commands, for the lab: docs/install.md, executed.

Steps of the guide that set up kvmha are fenced code blocks marked with the step's name::

    ```sh kvmha-lab=host-init
    kvmha fence init
    ```

The lab and the install tests run exactly those lines (``$VAR`` and ``${VAR}`` filled
from the values they give, a trailing ``\\`` joins lines; no shell), so nothing lab-only
writes kvmha's configuration: change the guide and the lab runs the new commands. The
guide is found as package data (the wheel carries docs/install.md), or as the RPM's
/usr/share/doc/kvmha/install.md, or where KVMHA_INSTALL_GUIDE points.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from kvmha.errors import KvmhaError

GUIDE_ENV = "KVMHA_INSTALL_GUIDE"
DOC_PATH = Path("/usr/share/doc/kvmha/install.md")
BLOCK_RE = re.compile(
    r"^```[a-z]*[ \t]+kvmha-lab=([a-z0-9-]+)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S
)
VAR_RE = re.compile(r"\$(?:\{([A-Z_][A-Z0-9_]*)\}|([A-Z_][A-Z0-9_]*))")


def guide_text() -> str:
    given = os.environ.get(GUIDE_ENV)
    if given:
        return Path(given).read_text(encoding="utf-8")
    try:
        return (resources.files("kvmha.tools.lab") / "install.md").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError, OSError):
        pass
    try:
        return DOC_PATH.read_text(encoding="utf-8")
    except OSError as exc:
        raise KvmhaError(
            "the install guide (docs/install.md) is not installed",
            f"reinstall kvmha, or set {GUIDE_ENV}=/path/to/docs/install.md",
        ) from exc


def steps(text: str) -> dict[str, list[str]]:
    """step name -> its command lines, in the guide's order (a step may span blocks)."""
    out: dict[str, list[str]] = {}
    for m in BLOCK_RE.finditer(text):
        lines: list[str] = []
        pending = ""
        for raw in m.group(2).splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            lines.append(pending + line)
            pending = ""
        if pending:
            lines.append(pending.strip())
        out.setdefault(m.group(1), []).extend(lines)
    return out


def expand(line: str, values: Mapping[str, str]) -> list[str]:
    """argv of one guide line, with $VARS from values (an unknown one is an error)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KvmhaError(f"the guide's line {line!r} uses ${name}, which is not given")
        return shlex.quote(values[name])

    return shlex.split(VAR_RE.sub(sub, line))


def commands(step: str, values: Mapping[str, str], text: str | None = None) -> list[list[str]]:
    found = steps(guide_text() if text is None else text)
    if step not in found or not found[step]:
        raise KvmhaError(
            f"the install guide has no step {step!r}",
            f"mark its commands in docs/install.md with ```sh kvmha-lab={step}",
        )
    return [expand(line, values) for line in found[step]]


# ---- running a step on a lab host ------------------------------------------------------
# A host's own view of the files the guide's set-up commands read and write.
HOST_VIEW = (("etc/corosync", "/etc/corosync"), ("etc/kvmha", "/etc/kvmha"))


def lab_argv(argv: list[str]) -> list[str]:
    """A guide command as the lab runs it: 'kvmha ...' is the installed kvmha command."""
    import sys

    if argv and argv[0] == "kvmha":
        return [sys.executable, "-I", "-m", "kvmha.tools.cli", *argv[1:]]
    raise KvmhaError(
        f"the lab runs only kvmha commands from the guide, not {argv[0]!r}",
        "keep other commands out of the kvmha-lab blocks",
    )


def offline_host_argv(host_dir: Path, host: str, argv: list[str]) -> list[str]:
    """argv that runs argv as if on a powered-off lab host's console before its services
    start: private mount, UTS and network namespaces (no cluster answers), the host's
    /etc/corosync and /etc/kvmha, its host name."""
    import sys

    return [
        "unshare", "--mount", "--uts", "--net", "--propagation", "private", "--",
        sys.executable, "-I", "-m", "kvmha.tools.lab.guide", "in-host", str(host_dir), host,
        "--", *lab_argv(argv),
    ]  # fmt: skip


def _in_host(host_dir: str, host: str, argv: list[str]) -> None:
    import socket
    import subprocess

    for sub, target in HOST_VIEW:
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "--bind", os.path.join(host_dir, sub), target], check=True)
    socket.sethostname(host)
    os.execv(argv[0], argv)  # noqa: S606 (argv of a guide command, no shell)


def main(argv: list[str]) -> None:
    if len(argv) >= 5 and argv[0] == "in-host" and argv[3] == "--":
        _in_host(argv[1], argv[2], argv[4:])
    raise SystemExit("usage: guide in-host HOST_DIR HOST -- CMD...")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
