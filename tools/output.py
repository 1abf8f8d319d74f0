"""Output for people: aligned tables, colour on a terminal, plain text when piped."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

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


def colour(text: str) -> str:
    """text styled by its meaning; click.echo drops the style when not on a terminal."""
    key = text.split(":", 1)[0].split(" ", 1)[0]
    return click.style(text, fg=COLOURS[key]) if key in COLOURS else text


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


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def progress_printer() -> Any:
    """A progress callback: a bar on a terminal, a line per 10 % when piped."""
    tty = sys.stdout.isatty()
    last = {"decile": -1}

    def show(pct: float | None, text: str) -> None:
        if tty:
            bar = "#" * int((pct or 0) / 5)
            line = f"\r[{bar:<20}] {'' if pct is None else f'{pct:3.0f}%'} {text}"
            click.echo(line[:200].ljust(80), nl=False)
            if pct is not None and pct >= 100:
                click.echo()
        elif pct is not None and int(pct // 10) != last["decile"]:
            last["decile"] = int(pct // 10)
            click.echo(f"{pct:3.0f}% {text}")

    return show
