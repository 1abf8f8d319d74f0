"""The kvmha(1) man page, generated from the CLI itself (every group, command and option).

python3 -I -m kvmha.tools.manpage > kvmha.1
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import click

from kvmha import __version__
from kvmha.tools.cli import main as cli


def _roff(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(
        ("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def _commands(group: click.Group, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, [*path, name])
        else:
            yield [*path, name], cmd


def render() -> str:
    out = [
        f'.TH KVMHA 1 "" "kvmha {__version__}" "kvmha manual"',
        ".SH NAME",
        "kvmha \\- high availability for KVM guests on Pacemaker/Corosync and libvirt",
        ".SH SYNOPSIS",
        ".B kvmha",
        "\\fINOUN\\fR \\fIVERB\\fR [\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]",
        ".SH DESCRIPTION",
        _roff(cli.help or ""),
        ".SH COMMANDS",
    ]
    for path, cmd in _commands(cli, []):
        ctx = click.Context(cmd, info_name=" ".join(["kvmha", *path]))
        pieces = cmd.collect_usage_pieces(ctx)
        out.append(".TP")
        out.append(f".B kvmha {_roff(' '.join(path))}")
        out.append(_roff(" ".join(pieces)))
        out.append(".br")
        out.append(_roff(cmd.help or cmd.short_help or ""))
        for param in cmd.params:
            if not isinstance(param, click.Option) or param.hidden:
                continue
            record = param.get_help_record(ctx)
            if record:
                out.append(".RS")
                out.append(f".TP\n.B {_roff(record[0])}\n{_roff(record[1])}")
                out.append(".RE")
    out += [
        ".SH EXIT STATUS",
        "0 success; 1 failure; 2 bad input (an unknown name, a value out of range). "
        "Errors are one line on standard error, followed by a line that says how to fix it "
        "when there is one.",
        ".SH SEE ALSO",
        "fence_kvmha(8), pcs(8), crm_mon(8), virsh(1)",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
