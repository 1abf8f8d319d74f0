"""kvmha host ...: capacity, evacuation and return of hosts."""

from __future__ import annotations

from typing import Optional

import click

from kvmha.tools.output import emit_json

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _say(msg: str) -> None:
    click.echo(msg, err=True)


@click.group()
def host() -> None:
    """Hosts: capacity, maintenance (evacuate and return)."""


@host.command("capacity")
@click.argument("name", required=False)
@click.option("--cpu", type=click.IntRange(1, 4096), help="CPUs guests may use.")
@click.option("--memory", type=click.IntRange(64, 1 << 30), help="MiB guests may use.")
@click.option(
    "--reserve",
    type=click.IntRange(0, 1 << 30),
    default=1024,
    show_default=True,
    help="MiB kept for the host itself when the size comes from libvirt.",
)
def host_capacity(
    name: Optional[str], cpu: Optional[int], memory: Optional[int], reserve: int
) -> None:
    """Set NAME's capacity (default: this host, from libvirt's node info)."""
    from kvmha import capacity
    from kvmha.errors import UsageError
    from kvmha.process import run

    local = run(["crm_node", "-n"], check=False).stdout.strip()
    name = name or local
    if cpu is None or memory is None:
        if name != local:
            raise UsageError(
                f"{name} is not this host ({local}): libvirt is read locally",
                f"run it on {name}, or give --cpu and --memory",
            )
        n_cpu, mem = capacity.libvirt_node_info()
        cpu = cpu or n_cpu
        memory = memory or max(64, mem - reserve)
    missing = capacity.set_capacity(name, cpu, memory)
    click.echo(f"{name}: capacity cpu {cpu}, hv_memory and host_memory {memory} MiB")
    if missing:
        click.echo(
            f"placement-strategy stays as it is until every host has a capacity "
            f"(missing: {', '.join(missing)})"
        )
    else:
        click.echo("every host has a capacity: placement-strategy balanced")


@host.command("evacuate")
@click.argument("name")
@click.option("--parallel", type=int, default=1, show_default=True, help="Live migrations at once.")
@click.option(
    "--wait", "wait_s", type=click.IntRange(1, 86400), help="Wait up to this many seconds."
)
@click.option(
    "--force", is_flag=True, help="Go ahead although some guests cannot move (they stop)."
)
@json_option
def host_evacuate(
    name: str, parallel: int, wait_s: Optional[int], force: bool, as_json: bool
) -> None:
    """Live-migrate every guest off NAME (at most --parallel at once); NAME stays in standby."""
    from kvmha import maintenance

    res = maintenance.evacuate(name, parallel, wait_s, force, _say)
    if as_json:
        emit_json(res)
        return
    if wait_s is None:
        click.echo(f"{name} in standby; {len(res['planned'])} guests are moving")
        return
    click.echo(
        f"{name} evacuated: {len(res['moved'])} moved, {len(res['not_moved'])} not moved"
        + (
            f" ({', '.join(x['guest'] + ': ' + x['state'] for x in res['not_moved'])})"
            if res["not_moved"]
            else ""
        )
    )


@host.command("return")
@click.argument("name")
@click.option("--move-back", is_flag=True, help="Live-migrate the evacuated guests back.")
@click.option("--wait", "wait_s", type=click.IntRange(1, 86400), default=300, show_default=True)
@json_option
def host_return(name: str, move_back: bool, wait_s: int, as_json: bool) -> None:
    """Take NAME out of standby (and bring its guests back with --move-back)."""
    from kvmha import maintenance

    res = maintenance.return_host(name, move_back, wait_s, _say)
    if as_json:
        emit_json(res)
        return
    click.echo(
        f"{name} returned" + (f", {len(res['moved_back'])} guests back" if move_back else "")
    )
