"""``kvmha net``: which bond modes work under a bridge.

``kvmha net check`` exit codes are its verdict, not the usual success/failure:
0 every bridge ok, 1 a warning, 2 something incompatible, 3 the check could not run
(unknown namespace, bad option, not permitted): errors never share a code with a verdict.
``kvmha net probe`` follows the usual convention: 0 it ran (verdicts are in the output),
1 it failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Optional

import click

from kvmha.errors import KvmhaError, UsageError
from kvmha.tools.clibase import VERDICT_FAILED, VerdictCommand
from kvmha.tools.output import emit, json_option


class _CheckError(KvmhaError):
    exit_code = VERDICT_FAILED


@click.group()
def net() -> None:
    """Bonds under bridges: inspect the live stack (check), prove it with traffic (probe)."""


@net.command(cls=VerdictCommand)
@click.option("--netns", metavar="NAME", help="Read this network namespace instead of the host.")
@json_option
def check(netns: Optional[str], as_json: bool) -> None:
    """A verdict for every bridge: ok, warning or incompatible, with reasons and references.

    Exit code: 0 all ok, 1 warnings, 2 incompatible, 3 the check could not run.
    """
    from kvmha.netcfg.check import check as run_check
    from kvmha.netcfg.check import exit_code, render_table

    try:
        report = run_check(netns)
    except KvmhaError as exc:
        raise _CheckError(exc.message, exc.fix) from exc
    if as_json:
        emit("net-check", report)
    else:
        click.echo(render_table(report), nl=False)
    sys.exit(exit_code(report))


def _progress() -> Any:
    t0 = time.monotonic()

    def say(msg: str) -> None:
        click.echo(f"[{time.monotonic() - t0:6.1f}s] {msg}", err=True)

    return say


@net.command()
@click.option(
    "--mode", "mode", required=True, metavar="N|all", help="Bond mode 0-6 (number or name), or all."
)
@click.option(
    "--switch",
    "switch",
    default="designed",
    show_default=True,
    metavar="designed|independent|static|lacp|all",
    help="Switch side: the one each mode is meant for, one kind, or all three.",
)
@click.option(
    "--kernel",
    type=click.Path(path_type=Path),
    metavar="PATH",
    help="Boot this kernel (vmlinuz) under QEMU and probe there.",
)
@click.option(
    "--modules",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="The kernel's modules (lib/modules/VERSION); default: beside --kernel.",
)
@click.option(
    "--soak",
    type=click.FloatRange(0, 120),
    default=11.0,
    show_default=True,
    help="Seconds of traffic on all flows (balance-tlb/alb rebalance every 10 s).",
)
@click.option("--no-failover", is_flag=True, help="Skip the phase after the active link fails.")
@json_option
def probe(
    mode: str,
    switch: str,
    kernel: Optional[Path],
    modules: Optional[Path],
    soak: float,
    no_failover: bool,
    as_json: bool,
) -> None:
    """Build a throwaway bond/bridge/switch topology in namespaces and send real traffic.

    Exit code: 0 the probe ran (see the verdicts), 1 it failed, 2 bad input.
    """
    from kvmha.netcfg import probe as p

    modes = p.parse_modes(mode)
    switches = p.parse_switch(switch)
    say = _progress()
    if kernel is not None:
        from kvmha.netcfg import vm

        report = vm.probe_in_vm(kernel, modules, modes, switch, soak, not no_failover, say)
    else:
        if modules is not None:
            raise UsageError("--modules needs --kernel")
        report = p.run(modes, switches, soak=soak, failover=not no_failover, progress=say)
    if as_json:
        emit("net-probe", report)
    else:
        click.echo(p.render_table(report), nl=False)
