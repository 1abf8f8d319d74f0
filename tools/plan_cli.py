"""kvmha plan, kvmha guest set: what-if plans from Pacemaker's scheduler, and placement
rules (priority, order, affinity) under admission control."""

from __future__ import annotations

import sys
from typing import Any, Optional

import click

from kvmha.tools.output import emit_json, table

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
NOT_TOLERATED = 3  # exit code: some failure scenario leaves an HA guest down


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def _hosts(spec: Optional[str]) -> Optional[list[str]]:
    if spec is None:
        return None
    hosts = [h.strip() for h in spec.split(",")]
    if not all(hosts):
        from kvmha.errors import UsageError

        raise UsageError(f"bad --fail {spec!r}", "give host names separated by commas")
    return hosts


@click.command("plan")
@click.option("--fail", "fail", metavar="HOST[,HOST...]", help="Plan for these hosts failing.")
@click.option(
    "--tolerate",
    type=int,
    metavar="N",
    help=f"Check every set of N failing hosts; exit {NOT_TOLERATED} when one would leave "
    "an HA guest down.",
)
@json_option
def plan_cmd(fail: Optional[str], tolerate: Optional[int], as_json: bool) -> None:
    """What happens if hosts fail now: Pacemaker's own scheduler (crm_simulate) on a
    copy of the live CIB. Default: each host failing alone."""
    from kvmha import plan
    from kvmha.errors import UsageError

    if fail is not None and tolerate is not None:
        raise UsageError("--fail and --tolerate exclude each other")
    p = plan.make_plan(plan.live_cib_text(), _hosts(fail), tolerate)
    if as_json:
        emit_json(p.as_json())
    else:
        for line in plan.text_report(p):
            click.echo(line)
        for s in p.scenarios:
            rows = [
                [g.name, g.from_, g.to, g.order, g.priority, g.reason]
                for g in s.guests
                if g.action != "stays" or not g.ha
            ]
            if rows:
                click.echo(f"\n{' + '.join(s.fail)} failing:")
                click.echo(table(["guest", "from", "to", "order", "priority", "why"], rows))
    if tolerate is not None and not p.ok:
        sys.exit(NOT_TOLERATED)


def admission_options(f: Any) -> Any:
    f = click.option("--force", is_flag=True, help="Override admission control (recorded).")(f)
    return click.option(
        "--tolerate",
        type=click.IntRange(0, 64),
        default=1,
        show_default=True,
        help="Admission control: refuse when afterwards the cluster could no longer "
        "survive the loss of this many hosts (0: only check that it fits now).",
    )(f)


def placement_options(f: Any) -> Any:
    f = admission_options(f)
    for opt in reversed(
        [
            click.option(
                "--priority",
                type=click.Choice(["high", "medium", "low"]),
                help="Restart priority (default for new guests: medium): higher guests "
                "start first and are kept running when not all fit.",
            ),
            click.option(
                "--after",
                multiple=True,
                metavar="GUEST",
                help="Start only after GUEST has started and passed its health checks.",
            ),
            click.option(
                "--apart-from", multiple=True, metavar="GUEST", help="Never on GUEST's host."
            ),
            click.option(
                "--together-with", multiple=True, metavar="GUEST", help="Always on GUEST's host."
            ),
            click.option(
                "--soft", is_flag=True, help="--apart-from/--together-with as a preference only."
            ),
        ]
    ):
        f = opt(f)
    return f


@click.command("set")
@click.argument("name")
@placement_options
@click.option("--no-after", multiple=True, metavar="GUEST", help="Remove an --after rule.")
@click.option(
    "--no-affinity", multiple=True, metavar="GUEST", help="Remove an apart/together rule."
)
def guest_set(
    name: str,
    priority: Optional[str],
    after: tuple[str, ...],
    apart_from: tuple[str, ...],
    together_with: tuple[str, ...],
    soft: bool,
    tolerate: int,
    force: bool,
    no_after: tuple[str, ...],
    no_affinity: tuple[str, ...],
) -> None:
    """Change a guest's restart priority, start order and affinity."""
    from kvmha import admission

    s = admission.Settings(priority, after, no_after, apart_from, together_with, no_affinity, soft)
    changes = admission.apply_settings(name, s, tolerate, force, _say)
    click.echo(f"{name}: {len(changes)} change{'s' if len(changes) != 1 else ''} written")
