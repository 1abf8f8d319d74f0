"""kvmha status, kvmha guest ..., kvmha dc ...: the cluster as admins see it.

Thin click commands over the core (kvmha.status, kvmha.guests, kvmha.livemigrate,
kvmha.datacentre); this host's network verdicts are added to the status here, at the
tools layer, so that the core never imports netcfg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kvmha.tools.complete import complete_dcs, complete_guests, complete_hosts
from kvmha.tools.output import colour, emit, json_option, progress_printer, table
from kvmha.tools.plan_cli import admission_options, placement_options  # issue #14


def _say(msg: str) -> None:
    click.echo(msg, err=True)


@click.command()
@json_option
def status(as_json: bool) -> None:
    """Hosts, guests, fence devices and events, and warnings of the cluster."""
    from kvmha.status import report

    rep = report()
    rep["warnings"].extend(network_warnings())
    if as_json:
        emit("status", rep)
        return
    c = rep["cluster"]
    click.echo(
        f"cluster: quorate {c['quorate']}, "
        f"designated controller {c['designated_controller'] or '-'}, "
        f"stonith-enabled {c['stonith_enabled']}\n"
    )
    click.echo(
        table(
            ["host", "state", "data centre", "guests"],
            [[h["name"], h["state"], h["dc"], h["guests"]] for h in rep["hosts"]],
            coloured=[1],
        )
    )
    click.echo()
    click.echo(
        table(
            ["guest", "state", "host", "health", "fails", "data centre", "priority", "after"],
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
    if rep["guest_nodes"]:  # Pacemaker Remote inside guests: what the cluster runs there
        click.echo(
            table(
                ["guest node", "state", "guest", "host", "resources"],
                [
                    [n["name"], n["state"], n["guest"], n["host"], ",".join(n["resources"])]
                    for n in rep["guest_nodes"]
                ],
                coloured=[1],
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


def network_warnings() -> list[dict[str, str]]:
    """Problems that 'kvmha net check' finds on this host's bridges, as status warnings."""
    try:
        from kvmha.netcfg import check as netcheck
    except ImportError:
        return []
    try:
        result = netcheck.check()
    except Exception as exc:  # a broken probe must not hide the cluster's state
        return [
            {
                "code": "net-check-failed",
                "message": f"kvmha net check failed: {exc}",
                "fix": "run 'kvmha net check' for details",
            }
        ]
    out = []
    for br in result.get("bridges", []):
        if br.get("verdict") in ("warning", "incompatible"):
            first = (br.get("findings") or [{}])[0]
            out.append(
                {
                    "code": f"net-{br['verdict']}",
                    "message": f"bridge {br['name']}: {first.get('message', br['verdict'])}",
                    "fix": "run 'kvmha net check' for details",
                }
            )
    return out


def _done(as_json: bool, text: str, **body: Any) -> None:
    """What a command changed: text for people, a "result" document under --json."""
    if as_json:
        emit("result", body)
    else:
        click.echo(text)


@click.group()
def guest() -> None:
    """Guests as cluster resources (ocf:kvmha:Guest)."""


@guest.command("add")
@click.argument("name", shell_complete=complete_guests)
@click.option(
    "--xml",
    "xml_file",
    type=click.Path(path_type=Path),
    required=True,
    help="The guest's libvirt domain XML, on storage every host can read.",
)
@click.option(
    "--dc", shell_complete=complete_dcs, help="Data centre: the guest runs only on its hosts."
)
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
@json_option
@placement_options
def guest_add(
    name: str,
    xml_file: Path,
    dc: str | None,
    health: tuple[str, ...],
    remote_node: bool,
    transport: str,
    wait_s: int,
    as_json: bool,
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
    _done(as_json, f"{name} runs on {host}", action="guest-add", guest=name, host=host)


@guest.command("remove")
@click.argument("name", shell_complete=complete_guests)
@json_option
def guest_remove(name: str, as_json: bool) -> None:
    """Stop the guest and delete its resource (its XML file stays)."""
    from kvmha import guests

    guests.remove(name)
    _done(as_json, f"{name} removed", action="guest-remove", guest=name, host=None)


@guest.command("list")
@json_option
def guest_list(as_json: bool) -> None:
    """Every guest with its state, host, health and data centre."""
    from kvmha.status import report

    rows = report()["guests"]
    if as_json:
        emit("guest-list", {"guests": rows})
        return
    click.echo(
        table(
            ["guest", "state", "host", "health", "dc", "agent"],
            [[g["name"], g["state"], g["host"], g["health"], g["dc"], g["agent"]] for g in rows],
            coloured=[1, 3],
        )
    )


@guest.command("start")
@click.argument("name", shell_complete=complete_guests)
@click.option("--wait", "wait_s", type=click.IntRange(1, 3600), default=180, show_default=True)
@json_option
@admission_options
def guest_start(name: str, wait_s: int, as_json: bool, tolerate: int, force: bool) -> None:
    """Let the cluster run the guest (enable its resource), after admission control."""
    from kvmha import admission, guests

    admission.check_start(name, tolerate, force, _say)
    guests.set_enabled(name, True, wait_s)
    _done(as_json, f"{name} started", action="guest-start", guest=name, host=None)


@guest.command("stop")
@click.argument("name", shell_complete=complete_guests)
@click.option("--wait", "wait_s", type=click.IntRange(1, 3600), default=180, show_default=True)
@json_option
def guest_stop(name: str, wait_s: int, as_json: bool) -> None:
    """Stop the guest and keep it stopped (disable its resource)."""
    from kvmha import guests

    guests.set_enabled(name, False, wait_s)
    _done(as_json, f"{name} stopped", action="guest-stop", guest=name, host=None)


@guest.command("migrate")
@click.argument("name", shell_complete=complete_guests)
@click.argument("host", shell_complete=complete_hosts)
@click.option("--wait", "wait_s", type=click.IntRange(1, 3600), default=300, show_default=True)
@json_option
def guest_migrate(name: str, host: str, wait_s: int, as_json: bool) -> None:
    """Live-migrate NAME to HOST, show progress, wait, and clear the move constraint.

    With --json the progress goes to stderr and the result to stdout."""
    from kvmha.livemigrate import migrate

    took = migrate(name, host, progress_printer(stream_err=as_json), wait_s)
    _done(
        as_json,
        f"{name} migrated to {host} in {took:.1f} s",
        action="guest-migrate",
        guest=name,
        host=host,
        seconds=round(took, 1),
    )


@click.group()
def dc() -> None:
    """Data centres: groups of hosts and guests that keep apart (dev, qa, ...)."""


@dc.command("create")
@click.argument("name")
@json_option
def dc_create(name: str, as_json: bool) -> None:
    """Create the data centre NAME (stored in the cluster configuration)."""
    from kvmha import datacentre

    datacentre.create(name)
    _done(as_json, f"data centre {name} created", action="dc-create", data_centre=name)


@dc.command("add-host")
@click.argument("name", shell_complete=complete_dcs)
@click.argument("host", shell_complete=complete_hosts)
@json_option
def dc_add_host(name: str, host: str, as_json: bool) -> None:
    """Put HOST into the data centre NAME (a host is in one data centre at most)."""
    from kvmha import datacentre

    left = datacentre.add_host(name, host)
    _done(
        as_json,
        f"{host} is in data centre {name}" + (f" (it left {left})" if left else ""),
        action="dc-add-host",
        data_centre=name,
        host=host,
        left=left,
    )


@dc.command("list")
@json_option
def dc_list(as_json: bool) -> None:
    """Every data centre with its hosts and guests."""
    from kvmha import datacentre, pcmk

    dcs = datacentre.all_dcs(pcmk.query_cib())
    if as_json:
        emit(
            "dc-list",
            {
                "data_centres": [
                    {"name": d.name, "hosts": list(d.hosts), "guests": list(d.guests)} for d in dcs
                ]
            },
        )
        return
    click.echo(
        table(
            ["data centre", "hosts", "guests"],
            [[d.name, ",".join(d.hosts) or "-", ",".join(d.guests) or "-"] for d in dcs],
        )
    )


@dc.command("show")
@click.argument("name", shell_complete=complete_dcs)
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
        emit("dc-show", {"name": name, "hosts": hosts, "guests": guests})
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
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script; it completes commands, options, and the names
    of guests, hosts, data centres and fence keys.

    bash: source <(kvmha completion bash); zsh: source <(kvmha completion zsh);
    fish: kvmha completion fish | source
    """
    from click.shell_completion import get_completion_class

    root = click.get_current_context().find_root().command
    cls = get_completion_class(shell)
    assert cls is not None  # the Choice lists only shells click knows
    click.echo(cls(root, {}, "kvmha", "_KVMHA_COMPLETE").source(), nl=False)
