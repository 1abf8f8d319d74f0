"""``kvmha lab ...``: the lab's verbs, registered in the kvmha command only where the lab
(the kvmha-lab package) is installed; nothing in production imports this package.

``--json`` prints JSON on stdout, as everywhere in kvmha; ``demo`` and ``chaos`` also write
their result to a file with ``--json-file FILE``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from kvmha.tools.lab.config import DEFAULT_LABDIR, MAX_GUESTS, MAX_HOSTS
from kvmha.tools.output import emit, json_option

labdir_option = click.option(
    "--labdir",
    type=click.Path(path_type=Path),
    default=DEFAULT_LABDIR,
    show_default=True,
    envvar="KVMHA_LABDIR",
    help="Directory that holds all of the lab's state.",
)


def _progress() -> Any:
    t0 = time.monotonic()

    def say(msg: str) -> None:
        click.echo(f"[{time.monotonic() - t0:6.1f}s] {msg}", err=True)

    return say


def _lab(labdir: Path, progress: bool = True) -> Any:
    from kvmha.tools.lab.lab import Lab

    return Lab(labdir, _progress() if progress else lambda _m: None)


@click.group()
def lab() -> None:
    """A local test lab: a host cluster of 1-5 hosts on this machine."""


@lab.command()
@labdir_option
@click.option("--hosts", type=click.IntRange(1, MAX_HOSTS), default=3, show_default=True)
@click.option("--guests", type=click.IntRange(0, MAX_GUESTS), default=3, show_default=True)
@click.option(
    "--agent",
    type=click.Choice(["Guest", "VirtualDomain"]),
    default="Guest",
    show_default=True,
    help="Resource agent that runs the guests.",
)
@click.option(
    "--token",
    "token_ms",
    type=click.IntRange(200, 30000),
    default=1000,
    show_default=True,
    help="Corosync token timeout in ms.",
)
@click.option(
    "--guest-image",
    type=click.Choice(["busybox", "debian", "debian-remote"]),
    default="busybox",
    show_default=True,
    help="busybox: tiny fast guests; debian: real Debian 12 guests; debian-remote: real "
    "guests as Pacemaker Remote guest nodes (docs/guests.md).",
)
@click.option(
    "--guest-cluster",
    is_flag=True,
    help="Form a Pacemaker cluster inside the Debian guests, fencing through kvmha.",
)
@json_option
def up(
    labdir: Path,
    hosts: int,
    guests: int,
    agent: str,
    token_ms: int,
    guest_image: str,
    guest_cluster: bool,
    as_json: bool,
) -> None:
    """Bring the lab up (idempotent); returns when every host is online and quorate."""
    _lab(labdir).up(hosts, guests, agent, token_ms, guest_image, guest_cluster)
    if as_json:
        emit("lab-action", {"action": "up", "host": None, "done": True})


@lab.command()
@labdir_option
@click.option("--purge", is_flag=True, help="Also delete the lab directory (logs included).")
@json_option
def down(labdir: Path, purge: bool, as_json: bool) -> None:
    """Stop every lab process by PID and remove the lab's namespaces."""
    _lab(labdir).down(purge)
    if as_json:
        emit("lab-action", {"action": "down", "host": None, "done": True})


@lab.command()
@labdir_option
@json_option
def status(labdir: Path, as_json: bool) -> None:
    """Hosts, guests and the last fencing of the lab."""
    st = _lab(labdir, progress=False).status()
    # "dc" means a data centre everywhere in kvmha: Pacemaker's DC is spelled out
    st["designated_controller"] = st.pop("dc", None)
    if as_json:
        emit("lab-status", st)
        return
    click.echo(
        f"lab {st['labdir']}  agent {st['agent']}  quorate {st['quorate']}  "
        f"designated controller {st['designated_controller'] or '-'}"
    )
    click.echo(f"{'HOST':8} {'STATE':9} {'POWER':6} {'NETWORK':10} ADDRESS")
    for h in st["hosts"]:
        click.echo(
            f"{h['name']:8} {h['state']:9} {h['power']:6} {h['network']:10} " f"{h['address']}"
        )
    click.echo(f"{'GUEST':8} {'STATE':9} {'HOST':6} ADDRESS")
    for g in st["guests"]:
        click.echo(f"{g['name']:8} {g['state']:9} {g['host'] or '-':6} {g['address']}")
    lf = st["last_fence"]
    if lf:
        click.echo(
            f"last fence: {lf['action']} {lf['target']} by {lf['delegate']}: "
            f"{lf['status']} at {lf['completed']}"
        )


def _host_command(name: str, method: str, help_text: str) -> None:
    @lab.command(name=name, help=help_text)
    @labdir_option
    @click.argument("host")
    @json_option
    def cmd(labdir: Path, host: str, as_json: bool) -> None:
        getattr(_lab(labdir, progress=False), method)(host)
        if as_json:
            emit("lab-action", {"action": name, "host": host, "done": True})
        else:
            click.echo(f"{host}: {name} done")


_host_command("power-cut", "power_cut", "Cut a host's power (all its processes die at once).")
_host_command("power-on", "power_on", "Restore a host's power; it boots and rejoins.")
_host_command("isolate", "isolate", "Unplug a host's network cable at the lab switch.")
_host_command("rejoin", "rejoin", "Plug a host's network cable back in.")


@lab.command(name="exec", context_settings={"ignore_unknown_options": True})
@labdir_option
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def exec_(labdir: Path, host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside HOST's namespaces; its exit code is passed through."""
    sys.exit(_lab(labdir, progress=False).exec_in(host, list(command)))


@lab.command()
@labdir_option
@click.argument("host")
@click.option("-n", "--lines", type=click.IntRange(1, 100000), default=40, show_default=True)
def logs(labdir: Path, host: str, lines: int) -> None:
    """The last lines of a host's console, corosync, pacemaker and libvirtd logs."""
    click.echo(_lab(labdir, progress=False).logs(host, lines), nl=False)


@lab.command()
@labdir_option
@click.option("--rounds", type=click.IntRange(1, 100000), default=10, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True, help="Fault schedule seed.")
@click.option(
    "--bound",
    "bound_s",
    type=click.FloatRange(10, 3600),
    default=150,
    show_default=True,
    help="Seconds within which a fault's guests must run again.",
)
@click.option("--faults", "kinds", help="Comma-separated fault kinds (default: all).")
@json_option
@click.option(
    "--json-file", "json_file", type=click.Path(path_type=Path), help="Also write the result."
)
@click.option(
    "--plot",
    "png",
    type=click.Path(path_type=Path),
    help="Write a PNG plot of recovery times per fault kind.",
)
def chaos(
    labdir: Path,
    rounds: int,
    seed: int,
    bound_s: float,
    kinds: str | None,
    as_json: bool,
    json_file: Path | None,
    png: Path | None,
) -> None:
    """Inject random faults into a running lab and check, every second, through every
    host's libvirt, that no guest runs twice and every guest runs again within the bound.
    Exit code 1 when there was a violation."""
    from kvmha.tools.lab import chaos as chaos_mod

    result = chaos_mod.soak(
        _lab(labdir),
        rounds,
        seed,
        bound_s,
        kinds.split(",") if kinds else None,
        say=lambda m: click.echo(m, err=True),
    )
    chaos_mod.write(result, json_file, png)
    if as_json:
        emit("lab-chaos", result)
    click.echo(f"{rounds} rounds, seed {seed}: {len(result['violations'])} violations", err=as_json)
    for kind, s in sorted(result["recovery_s"].items()):
        click.echo(
            f"  {kind:20} n={s['n']:<3} median {s['median']:6.1f} s  p95 "
            f"{s['p95']:6.1f} s  max {s['max']:6.1f} s",
            err=as_json,
        )
    if result["violations"]:
        sys.exit(1)


@lab.command()
@labdir_option
@click.option("--hosts", type=click.IntRange(2, MAX_HOSTS), default=3, show_default=True)
@click.option("--guests", type=click.IntRange(1, MAX_GUESTS), default=3, show_default=True)
@click.option(
    "--agent",
    type=click.Choice(["Guest", "VirtualDomain"]),
    default="Guest",
    show_default=True,
)
@json_option
@click.option(
    "--json-file",
    "json_file",
    type=click.Path(path_type=Path),
    help="Also write the timeline as JSON to this file.",
)
@click.option(
    "--guest-image",
    type=click.Choice(["busybox", "debian"]),
    default="busybox",
    show_default=True,
    help="debian: a guest cluster of 3 real guests serving HTTP (docs/guests.md).",
)
def demo(
    labdir: Path,
    hosts: int,
    guests: int,
    agent: str,
    as_json: bool,
    json_file: Path | None,
    guest_image: str,
) -> None:
    """Bring a lab up, cut the power of a host that runs a guest, and time the recovery.

    With --json the timeline's text goes to stderr and its JSON to stdout."""
    from kvmha.tools.lab import demo, realdemo

    # debian: a real guest cluster (realdemo); busybox: the host cluster's demo
    run_demo = realdemo.run_demo if guest_image == "debian" else demo.run_demo

    if not as_json:
        run_demo(_lab(labdir), hosts, guests, agent, json_file)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo.json"
        with contextlib.redirect_stdout(sys.stderr):
            run_demo(_lab(labdir), hosts, guests, agent, out)
        result = json.loads(out.read_text())
    if json_file is not None:
        json_file.write_text(json.dumps(result, indent=2) + "\n")
    emit("lab-demo", result)
