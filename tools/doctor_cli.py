"""``kvmha doctor``: check this host, one finding per line with its fix.

Exit codes are the verdict, as for ``kvmha net check``: 0 all ok, 1 warnings, 2 errors,
3 doctor itself could not run (bad option, unknown check): a failure never shares a code
with a verdict.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from typing import Any, Optional

import click

from kvmha.errors import KvmhaError
from kvmha.tools.clibase import VerdictCommand
from kvmha.tools.doctor import (
    CHECK_NAMES,
    DOCTOR_FAILED,
    ERROR,
    OK,
    WARNING,
    Context,
    Options,
    report,
    report_exit_code,
    select_checks,
)
from kvmha.tools.output import env_allows_colour, json_option, print_error, style

STYLE: dict[str, dict[str, Any]] = {
    OK: {"fg": "green"},
    WARNING: {"fg": "yellow", "bold": True},
    ERROR: {"fg": "red", "bold": True},
}
LABEL = {OK: "ok", WARNING: "WARNING", ERROR: "ERROR"}


def _progress(enabled: bool) -> Any:
    def say(title: str) -> None:
        if enabled:
            click.echo(f"\r\033[Kchecking {title}...", err=True, nl=False)

    return say


def render(doc: dict[str, Any], width: Optional[int]) -> list[str]:
    """The findings as a table: CHECK, STATUS, FINDING and its fix under it.

    ``width`` wraps the text column on a terminal; None (piped) keeps one line each
    and no colour. NO_COLOR and TERM=dumb turn colour off on a terminal too.
    """
    on = width is not None and env_allows_colour()
    lines = []
    src = doc.get("services_from")
    how = {"systemd": "services from systemd", "processes": "services from /proc"}.get(str(src), "")
    title = style(f"kvmha doctor: {doc['host']}", enabled=on, bold=True)
    lines.append(title + (f"  ({how})" if how else ""))
    cw = max([len("CHECK")] + [len(f["check"]) for f in doc["findings"]])
    sw = len("WARNING")
    indent = cw + sw + 2
    lines.append(f"{'CHECK':{cw}} {'STATUS':{sw}} FINDING")

    def wrap(text: str, first: str) -> list[str]:
        if width is None or width - indent < 30:
            return [first + text]
        out = textwrap.wrap(text, width - indent, break_on_hyphens=False) or [""]
        return [first + out[0]] + [" " * indent + x for x in out[1:]]

    for f in doc["findings"]:
        sev = f["severity"]
        label = style(f"{LABEL[sev]:{sw}}", enabled=on, **STYLE[sev])
        lines += wrap(f["message"], f"{f['check']:{cw}} {label} ")
        if f["fix"] and sev != OK:
            lines += wrap("fix: " + f["fix"], " " * indent)
    s = doc["summary"]
    tail = f"{s[OK]} ok, {s[WARNING]} warning(s), {s[ERROR]} error(s)"
    worst = ERROR if s[ERROR] else WARNING if s[WARNING] else OK
    lines.append(style(tail, enabled=on, **STYLE[worst]))
    return lines


@click.command(cls=VerdictCommand)
@json_option
@click.option(
    "--skip",
    multiple=True,
    type=click.Choice(CHECK_NAMES),
    metavar="CHECK",
    help=f"Leave a check out (repeatable): {', '.join(CHECK_NAMES)}.",
)
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(CHECK_NAMES),
    metavar="CHECK",
    help="Run only this check (repeatable).",
)
@click.option(
    "--libvirt-uri",
    default="qemu:///system",
    show_default=True,
    metavar="URI",
    help="The libvirt connection to test.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.5, 300),
    default=10.0,
    show_default=True,
    help="Seconds each call (libvirt, crm_mon, D-Bus) may take.",
)
@click.option(
    "--bus-address",
    metavar="ADDR",
    hidden=True,
    help="Ask systemd on this D-Bus address instead of the system bus (tests).",
)
def doctor(
    as_json: bool,
    skip: tuple[str, ...],
    only: tuple[str, ...],
    libvirt_uri: str,
    timeout: float,
    bus_address: Optional[str],
) -> None:
    """Check this host: libvirt, cluster services, stonith, quorum, time sync, key file
    modes and bonds under bridges. Every problem comes with its fix.

    Services are read from systemd over D-Bus; where systemd is not the init (a
    container, the kvmha lab) doctor says so and looks for their processes instead.

    Exit code: 0 all ok, 1 warnings, 2 errors, 3 doctor could not run.
    """
    try:
        checks = select_checks(skip, only)
        ctx = Context(Options(libvirt_uri=libvirt_uri, timeout=timeout, bus_address=bus_address))
        progress = sys.stderr.isatty()
        try:
            doc = report(ctx, checks, _progress(progress))
        finally:
            if progress:
                click.echo("\r\033[K", err=True, nl=False)
    except KvmhaError as exc:
        print_error(exc.message, exc.fix, DOCTOR_FAILED, as_json)
        sys.exit(DOCTOR_FAILED)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        tty = sys.stdout.isatty()
        width = shutil.get_terminal_size((100, 24)).columns if tty else None
        for line in render(doc, width):
            click.echo(line)
    sys.exit(report_exit_code(doc))


if __name__ == "__main__":
    doctor(prog_name="kvmha doctor")
