"""kvmha status, kvmha guest ..., kvmha dc ...: the cluster as admins see it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kvmha.tools.output import colour, emit_json, progress_printer, table
from kvmha.tools.plan_cli import admission_options, placement_options  # issue #14

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _say(msg: str) -> None:
    click.echo(msg, err=True)


@click.command()
@json_option
def status(as_json: bool) -> None:
    """Hosts, guests, fence devices and events, and warnings of the cluster."""
    from kvmha.status import report

    rep = report()
    if as_json:
        emit_json(rep)
        return
    c = rep["cluster"]
    click.echo(
        f"cluster: quorate {c['quorate']}, "
        f"designated controller {c['designated_controller'] or '-'}, "
        f"stonith-enabled {c['stonith_enabled']}\n"
    )
    click.echo(
        table(
            ["host", "state", "dc", "guests"],
            [[h["name"], h["state"], h["dc"], h["guests"]] for h in rep["hosts"]],
            coloured=[1],
        )
    )
    click.echo()
    click.echo(
        table(
            ["guest", "state", "host", "health", "fails", "dc", "priority", "after"],
            [
                [
                    *(g["name"], g["state"], g["host"], g["health"], g["fail_count"], g["dc"]),
                    *(g.get("priority"), ",".join(g.get("after", [])) or None),  # issue #14
                ]
                for g in rep["guests"]
            ],
            coloured=[1, 3],
        )
    )
    click.echo()
    f = rep["fencing"]
    click.echo(
        table(
            ["fence device", "agent", "state", "host"],
            [[d["id"], d["agent"], d["state"], d["host"]] for d in f["devices"]],
            coloured=[2],
        )
    )
    for e in f["events"]:
        click.echo(
            f"fenced: {e['action']} {e['target']} by {e['delegate']}: {e['status']} "
            f"at {e['completed']}"
        )
    for w in rep["warnings"]:
        click.echo(colour("warning") + f": {w['message']} (fix: {w['fix']})")
    if rep["cluster"].get("frozen"):  # issue #14: a banner while HA is frozen
        click.echo(colour("warning: HA IS FROZEN") + " (maintenance-mode): kvmha ha thaw")


@click.group()
def guest() -> None:
    """Guests as cluster resources (ocf:kvmha:Guest)."""


@guest.command("add")
@click.argument("name")
@click.option(
    "--xml",
    "xml_file",
    type=click.Path(path_type=Path),
    required=True,
    help="The guest's libvirt domain XML, on storage every host can read.",
)
@click.option("--dc", help="Data centre: the guest runs only on its hosts.")
@click.option(
    "--health",
    multiple=True,
    metavar="CHECK",
    help="agent | http=URL | tcp=HOST:PORT | command=CMD (repeatable); adds a deep "
    "monitor every 30 s that makes the cluster recover the guest when it fails.",
)
@click.option(
    "--remote-node",
    is_flag=True,
    help="The guest runs pacemaker-remoted: make it a guest node named NAME.",
)
@click.option(
    "--transport",
    type=click.Choice(["ssh", "tcp", "tls"]),
    default="ssh",
    show_default=True,
    help="libvirt transport between hosts for live migration.",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.IntRange(0, 3600),
    default=180,
    show_default=True,
    help="Seconds to wait for the guest to run (0: do not wait).",
)
@placement_options
def guest_add(
    name: str,
    xml_file: Path,
    dc: str | None,
    health: tuple[str, ...],
    remote_node: bool,
    transport: str,
    wait_s: int,
    **placing: Any,
) -> None:
    """Make the domain NAME (defined by --xml) a highly available guest."""
    from kvmha import admission, guests

    checks = [guests.HealthCheck.parse(h) for h in health]
    hook = admission.add_hook(xml_file, *admission.settings_from(placing), _say)
    host = guests.add(
        name,
        xml_file,
        dc=dc,
        health=checks,
        remote_node=remote_node,
        transport=transport,
        wait_s=max(wait_s, 1),
        say=_say,
        before_enable=hook,
    )
    click.echo(f"{name} runs on {host}")


@guest.command("remove")
@click.argument("name")
def guest_remove(name: str) -> None:
    """Stop the guest and delete its resource (its XML file stays)."""
    from kvmha import guests

    guests.remove(name)
    click.echo(f"{name} removed")


@guest.command("list")
@json_option
def guest_list(as_json: bool) -> None:
    """Every guest with its state, host, health and data centre."""
    from kvmha.status import report

    rows = report()["guests"]
    if as_json:
        emit_json(rows)
        return
    click.echo(
        table(
            ["guest", "state", "host", "health", "dc", "agent"],
            [[g["name"], g["state"], g["host"], g["health"], g["dc"], g["agent"]] for g in rows],
            coloured=[1, 3],
        )
    )


@guest.command("start")
@click.argument("name")
@click.option("--wait", "wait_s", type=click.IntRange(1, 3600), default=180, show_default=True)
@admission_options
def guest_start(name: str, wait_s: int, tolerate: int, force: bool) -> None:
    """Let the cluster run the guest (enable its resource), after admission control."""
    from kvmha import admission, guests

    admission.check_start(name, tolerate, force, _say)
    guests.set_enabled(name, True, wait_s)
    click.echo(f"{name} started")


@guest.command("stop")
@click.argument("name")
@click.option("--wait", "wait_s", type=click.IntRange(1, 3600), default=180, show_default=True)
def guest_stop(name: str, wait_s: int) -> None:
    """Stop the guest and keep it stopped (disable its resource)."""
    from kvmha import guests

    guests.set_enabled(name, False, wait_s)
    click.echo(f"{name} stopped")


@guest.command("migrate")
@click.argument("name")
@click.argument("host")
@click.option("--wait", "wait_s", type=click.IntRange(1, 3600), default=300, show_default=True)
def guest_migrate(name: str, host: str, wait_s: int) -> None:
    """Live-migrate NAME to HOST, show progress, wait, and clear the move constraint."""
    from kvmha.livemigrate import migrate

    took = migrate(name, host, progress_printer(), wait_s)
    click.echo(f"{name} migrated to {host} in {took:.1f} s")


@click.group()
def dc() -> None:
    """Data centres: groups of hosts and guests that keep apart (dev, qa, ...)."""


@dc.command("create")
@click.argument("name")
def dc_create(name: str) -> None:
    """Create the data centre NAME (stored in the cluster configuration)."""
    from kvmha import datacentre

    datacentre.create(name)
    click.echo(f"data centre {name} created")


@dc.command("add-host")
@click.argument("name")
@click.argument("host")
def dc_add_host(name: str, host: str) -> None:
    """Put HOST into the data centre NAME (a host is in one data centre at most)."""
    from kvmha import datacentre

    left = datacentre.add_host(name, host)
    click.echo(f"{host} is in data centre {name}" + (f" (it left {left})" if left else ""))


@dc.command("list")
@json_option
def dc_list(as_json: bool) -> None:
    """Every data centre with its hosts and guests."""
    from kvmha import datacentre, pcmk

    dcs = datacentre.all_dcs(pcmk.query_cib())
    if as_json:
        emit_json([{"name": d.name, "hosts": list(d.hosts), "guests": list(d.guests)} for d in dcs])
        return
    click.echo(
        table(
            ["data centre", "hosts", "guests"],
            [[d.name, ",".join(d.hosts) or "-", ",".join(d.guests) or "-"] for d in dcs],
        )
    )


@dc.command("show")
@click.argument("name")
@json_option
def dc_show(name: str, as_json: bool) -> None:
    """The hosts and guests of one data centre, with their state."""
    from kvmha import datacentre, pcmk
    from kvmha.status import report

    datacentre.require(pcmk.query_cib(), name)
    rep = report()
    hosts = [h for h in rep["hosts"] if h["dc"] == name]
    guests = [g for g in rep["guests"] if g["dc"] == name]
    if as_json:
        emit_json({"name": name, "hosts": hosts, "guests": guests})
        return
    click.echo(f"data centre {name}\n")
    click.echo(
        table(
            ["host", "state", "guests"],
            [[h["name"], h["state"], h["guests"]] for h in hosts],
            coloured=[1],
        )
    )
    click.echo()
    click.echo(
        table(
            ["guest", "state", "host", "health"],
            [[g["name"], g["state"], g["host"], g["health"]] for g in guests],
            coloured=[1, 3],
        )
    )


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh"]))
def completion(shell: str) -> None:
    """Print the shell completion script (bash: source <(kvmha completion bash))."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, _KVMHA_COMPLETE=f"{shell}_source")
    out = subprocess.run(
        [sys.executable, "-I", "-m", "kvmha.tools.cli"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    click.echo(out.stdout, nl=False)
