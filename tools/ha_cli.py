"""kvmha ha freeze|thaw: cluster-wide maintenance (nothing recovered or moved)."""

from __future__ import annotations

import click


@click.group()
def ha() -> None:
    """Cluster-wide HA switches."""


@ha.command("freeze")
def ha_freeze() -> None:
    """Freeze HA (maintenance-mode): guests keep running, nothing is recovered or moved."""
    from kvmha import maintenance

    changed = maintenance.freeze()
    click.echo("HA frozen" if changed else "HA was frozen already")


@ha.command("thaw")
def ha_thaw() -> None:
    """Thaw HA: the cluster probes everything again and recovers what needs it."""
    from kvmha import maintenance

    changed = maintenance.thaw()
    click.echo("HA thawed" if changed else "HA was not frozen")
