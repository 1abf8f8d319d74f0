"""kvmha events: the cluster's recent events, newest first (see kvmha/events.py)."""

from __future__ import annotations

import contextlib
import os
from collections import deque

import click

from kvmha.errors import KvmhaError
from kvmha.tools.output import emit, json_option, table

LISTENER_CONF = "/etc/kvmha/fence/listener.conf"
DEFAULT_AUDIT_LOG = "/var/log/kvmha/fence-audit.log"


def audit_log_path(conf: str = LISTENER_CONF) -> str | None:
    """The fence listener's audit log, as its configuration names it."""
    if not os.path.exists(conf):
        return DEFAULT_AUDIT_LOG
    from kvmha.fence.listener import Config

    try:
        return Config.load(conf).audit_log
    except (KvmhaError, SystemExit, ValueError, KeyError):  # a broken config must not hide
        # the events: doctor reports it
        return DEFAULT_AUDIT_LOG


def audit_tail(path: str | None, lines: int = 2000) -> list[str]:
    if not path:
        return []
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        return list(deque(f, maxlen=lines))
    return []


@click.command()
@json_option
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="At most N events."
)
def events(as_json: bool, limit: int) -> None:
    """Recent host fencing, guest starts, stops, migrations, failures and guest-cluster
    fence requests, newest first."""
    from kvmha.events import report

    rep = report(audit_tail(audit_log_path()), limit)
    if as_json:
        emit("events", rep)
        return
    click.echo(
        table(
            ["time", "kind", "event"],
            [[e["time"], e["kind"], e["message"]] for e in rep["events"]],
        )
    )
