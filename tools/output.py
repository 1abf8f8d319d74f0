"""Output for people and for programs: aligned tables, colour only where it helps, JSON
documents that carry their schema, and the one error format.

Colour is used on a terminal only, never when ``NO_COLOR`` is set (https://no-color.org)
or ``TERM`` is ``dumb``. Every JSON document is an object whose ``"schema"`` names its
JSON Schema in docs/schemas/ (``kvmha.NAME.v1`` is ``docs/schemas/NAME.v1.json``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any, Optional

import click

COLOURS = {
    "ok": "green",
    "online": "green",
    "running": "green",
    "started": "green",
    "warning": "yellow",
    "standby": "yellow",
    "pending": "yellow",
    "migrating": "yellow",
    "error": "red",
    "failed": "red",
    "fenced": "red",
    "offline": "red",
    "unclean": "red",
    "stopped": "red",
    "incompatible": "red",
}

JSON_META = "kvmha.json"  # ctx.meta key: this invocation asked for --json


def env_allows_colour() -> bool:
    """NO_COLOR unset or empty, and TERM not dumb."""
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def colour_enabled(stream: Optional[IO[str]] = None) -> bool:
    """Colour on this stream: a terminal, NO_COLOR unset or empty, TERM not dumb."""
    if not env_allows_colour():
        return False
    stream = stream if stream is not None else sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def style(text: str, *, enabled: Optional[bool] = None, err: bool = False, **kw: Any) -> str:
    """click.style where colour is enabled (by default: for stdout, or stderr), plain
    text otherwise."""
    if enabled is None:
        enabled = colour_enabled(sys.stderr if err else sys.stdout)
    return click.style(text, **kw) if enabled else text


def colour(text: str) -> str:
    """text styled by its meaning (online, failed, ...)."""
    key = text.split(":", 1)[0].split(" ", 1)[0]
    return style(text, fg=COLOURS[key]) if key in COLOURS else text


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], coloured: Sequence[int] = ()
) -> str:
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for r in cells:
        parts = []
        for i, (c, w) in enumerate(zip(r, widths)):
            pad = c.ljust(w)
            parts.append(colour(c) + pad[len(c) :] if i in coloured else pad)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def document(schema: str, body: dict[str, Any]) -> dict[str, Any]:
    """body as a document of schema NAME (``kvmha.NAME.v1``), "schema" first."""
    return {"schema": f"kvmha.{schema}.v1", **{k: v for k, v in body.items() if k != "schema"}}


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def emit(schema: str, body: dict[str, Any]) -> None:
    """Print body as a JSON document of schema NAME on stdout."""
    emit_json(document(schema, body))


def _mark_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_META] = True
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=_mark_json,
    help="Print a JSON document on stdout (errors too).",
)


def error_document(message: str, fix: Optional[str], exit_code: int) -> dict[str, Any]:
    return document("error", {"error": {"message": message, "fix": fix, "exit_code": exit_code}})


def print_error(message: str, fix: Optional[str], exit_code: int, as_json: bool) -> None:
    """The one error format: ``kvmha: error: ...`` and ``kvmha: fix: ...`` on stderr; under
    --json also the error document on stdout, so a program reading stdout learns why."""
    message = " ".join(message.split())
    click.echo(f"kvmha: error: {message}", err=True)
    if fix:
        click.echo(f"kvmha: fix: {' '.join(fix.split())}", err=True)
    if as_json:
        emit_json(error_document(message, fix, exit_code))


def progress_printer(stream_err: bool = False) -> Any:
    """A progress callback: a bar on a terminal, a line per 10 % when piped."""
    stream = sys.stderr if stream_err else sys.stdout
    tty = stream.isatty()
    last = {"decile": -1}

    def show(pct: float | None, text: str) -> None:
        if tty:
            bar = "#" * int((pct or 0) / 5)
            line = f"\r[{bar:<20}] {'' if pct is None else f'{pct:3.0f}%'} {text}"
            click.echo(line[:200].ljust(80), nl=False, err=stream_err)
            if pct is not None and pct >= 100:
                click.echo(err=stream_err)
        elif pct is not None and int(pct // 10) != last["decile"]:
            last["decile"] = int(pct // 10)
            click.echo(f"{pct:3.0f}% {text}", err=stream_err)

    return show
