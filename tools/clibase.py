"""The kvmha command's conventions, shared by every command group (and the standalone
entries of ``python3 -m kvmha.tools.*_cli``): one-line errors, ``-h``, the closest command
for a typo, the JSON error document, ``--verbose``. See kvmha.tools.cli for the rules.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, Optional

import click

from kvmha import process
from kvmha.errors import KvmhaError
from kvmha.tools.output import JSON_META, print_error

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}
USAGE_EXIT = 2
_NO_SUCH_COMMAND = re.compile(r"^No such command '(?P<name>.*)'\.$")


def _json_wanted(ctx: Optional[click.Context], argv: Sequence[str]) -> bool:
    if ctx is not None and ctx.meta.get(JSON_META):
        return True
    words = list(argv)
    return "--json" in (words[: words.index("--")] if "--" in words else words)


def _command_path(ctx: Optional[click.Context]) -> str:
    return ctx.command_path if ctx is not None and ctx.command_path else "kvmha"


def closest_command(group: click.Group, ctx: click.Context, name: str) -> Optional[str]:
    """The command of group whose name is closest to name (a typo), or None."""
    names = [
        n
        for n in group.list_commands(ctx)
        if not getattr(group.get_command(ctx, n), "hidden", False)
    ]
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    if near:
        return near[0]
    starts = [n for n in names if n.startswith(name)] if name else []
    return starts[0] if len(starts) == 1 else None


def usage_message(exc: click.UsageError) -> tuple[str, str]:
    """(message, fix) of a usage error, each one line."""
    ctx = exc.ctx
    path = _command_path(ctx)
    text = " ".join(exc.format_message().split())
    m = _NO_SUCH_COMMAND.match(text)
    if m and ctx is not None and isinstance(ctx.command, click.Group):
        name = m.group("name")
        near = closest_command(ctx.command, ctx, name)
        message = f"unknown command {name!r} for {path!r}"
        fix = f"did you mean '{path} {near}'?" if near else f"see '{path} --help'"
        return message, fix
    text = text[:-1] if text.endswith(".") else text
    where = path.split(" ", 1)[1] if " " in path else path
    message = f"{where}: {text[:1].lower()}{text[1:]}" if text else where
    usage = ""
    if ctx is not None:
        pieces = ctx.command.collect_usage_pieces(ctx)
        usage = f"usage: {path} {' '.join(pieces)}; " if pieces else ""
    return message, f"{usage}see '{path} --help'"


class OneLineErrors(click.Command):
    """A command (or group) run as a program: usage errors and other click errors become
    the one-line format, with the fix; never click's usage block."""

    def main(
        self,
        args: Optional[Sequence[str]] = None,
        prog_name: Optional[str] = None,
        complete_var: Optional[str] = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(
                argv, prog_name or "kvmha", complete_var, standalone_mode=False, **extra
            )
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        except click.UsageError as exc:
            message, fix = usage_message(exc)
            code = exc.exit_code
            print_error(message, fix, code, _json_wanted(exc.ctx, argv))
        except click.ClickException as exc:
            code = exc.exit_code
            print_error(exc.format_message(), None, code, _json_wanted(None, argv))
        except click.Abort:
            click.echo("kvmha: interrupted", err=True)
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


class Group(OneLineErrors, click.Group):
    """A kvmha command group: KvmhaError and usage errors become the one-line format."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KvmhaError as exc:
            print_error(exc.message, exc.fix, exc.exit_code, _json_wanted(ctx, sys.argv[1:]))
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("kvmha: interrupted", err=True)
            ctx.exit(130)


VERDICT_FAILED = 3


class VerdictCommand(OneLineErrors):
    """A command whose exit code is its verdict (0 ok, 1 warnings, 2 errors or
    incompatible, as doctor and net check answer): a usage error exits 3, so that 1 and 2
    always mean a verdict."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.exit_code = VERDICT_FAILED
            raise


def _verbose(_ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value or os.environ.get("KVMHA_VERBOSE") not in (None, "", "0"):
        process.set_trace(lambda line: click.echo(f"kvmha: {line}", err=True))
    return value


verbose_option = click.option(
    "-v",
    "--verbose",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_verbose,
    help="Show the cluster and libvirt commands kvmha runs (on stderr).",
)
