"""The man pages, generated from the programs themselves so that they stay true:
kvmha(1) from the click commands (every group, command, option and exit status),
kvmha-fence-listener(8) from the listener's docstring and options, and fence_kvmha(8)
from the fence agent's own option table.

    python3 -I -m kvmha.tools.manpage [kvmha|kvmha-fence-listener|fence_kvmha] > PAGE
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator

import click

from kvmha import __version__
from kvmha.tools.cli import main as cli

# Exit statuses that differ from the convention (0 done, 1 failed, 2 bad input).
DEFAULT_EXIT = "0 done; 1 failed; 2 bad input (an unknown name, a value out of range)"
EXIT_STATUS = {
    "doctor": "0 all ok; 1 warnings; 2 errors; 3 doctor could not run (bad option)",
    "net check": "0 every bridge ok; 1 a warning; 2 incompatible; 3 the check could not run",
    "net probe": "0 the probe ran (verdicts in the output); 1 it failed; 2 bad input; "
    "130 interrupted",
    "completion": "0 the script was printed; 2 an unknown shell",
    "lab exec": "the exit status of COMMAND; 2 bad input",
    "lab chaos": "0 no violation; 1 a guest ran twice or did not recover within the bound; "
    "2 bad input",
    "fence test": "0 every listener answered; 1 a listener did not; 2 bad input",
}

EXAMPLES = [
    ("Is this host fit to run highly available guests?", "kvmha doctor"),
    ("The whole cluster: hosts, guests, fencing, warnings.", "kvmha status"),
    (
        "Make a domain a highly available guest of data centre qa, with a deep health check.",
        "kvmha guest add web1 --xml /shared/web1.xml --dc qa --health http=http://web1/health",
    ),
    (
        "Live-migrate it, with progress, and print the result as JSON.",
        "kvmha guest migrate web1 host3 --json",
    ),
    ("Data centres.", "kvmha dc create qa; kvmha dc add-host qa host3; kvmha dc show qa"),
    ("A key for a guest cluster, scoped to its data centre.", "kvmha fence key create web --dc qa"),
    ("Which bond modes work under this host's bridges?", "kvmha net check"),
    ("See the cluster commands kvmha runs.", "kvmha --verbose guest stop web1"),
    ("Shell completion (bash, zsh, fish).", "source <(kvmha completion bash)"),
]

FILES = [
    ("/etc/kvmha/fence/listener.conf", "the fence listener's configuration (fence, doctor)"),
    ("/etc/kvmha/fence/hosts.key", "the hosts' key (0600)"),
    ("/etc/kvmha/fence/keys/NAME.key", "guest-cluster keys and their scopes (0600)"),
    ("/var/log/kvmha/fence-audit.log", "every fence request, answer and refusal"),
    ("/usr/lib/ocf/resource.d/kvmha/Guest", "the resource agent the guests run under"),
    ("/usr/share/bash-completion/completions/kvmha", "bash completion"),
]

ENVIRONMENT = [
    ("KVMHA_VERBOSE", "1: as --verbose, show the cluster and libvirt commands kvmha runs"),
    ("KVMHA_FENCE_CONFIG", "the listener configuration that kvmha fence reads"),
    ("KVMHA_LABDIR", "the lab's directory (kvmha lab, in the kvmha-lab package)"),
    ("NO_COLOR", "set and not empty: no colour (https://no-color.org)"),
    ("TERM", "dumb: no colour; colour is used on a terminal only"),
    ("_KVMHA_COMPLETE", "used by the completion scripts"),
]


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


def exit_status(path: list[str]) -> str:
    return EXIT_STATUS.get(" ".join(path), DEFAULT_EXIT)


def _pairs(rows: list[tuple[str, str]]) -> list[str]:
    out = []
    for a, b in rows:
        out += [".TP", f".B {_roff(a)}", _roff(b)]
    return out


def render_kvmha() -> str:
    out = [
        f'.TH KVMHA 1 "" "kvmha {__version__}" "kvmha manual"',
        ".SH NAME",
        "kvmha \\- high availability for KVM guests on Pacemaker/Corosync and libvirt",
        ".SH SYNOPSIS",
        ".B kvmha",
        "[\\fB\\-v\\fR] \\fINOUN\\fR \\fIVERB\\fR [\\fIOPTIONS\\fR] [\\fIARGUMENTS\\fR]",
        ".SH DESCRIPTION",
        _roff(cli.help or ""),
        ".PP",
        _roff(
            "Every command takes -h or --help. Every command that reports or changes something "
            "takes --json and then prints one JSON document on standard output, whose "
            '"schema" names its JSON Schema (docs/schemas/ in the sources); a failure under '
            '--json prints an error document ("kvmha.error.v1") as well. Errors are one line '
            "on standard error, kvmha: error: ..., followed by kvmha: fix: ... when there is "
            "something to do; a mistyped command is answered with the closest one."
        ),
        ".SH OPTIONS",
        ".TP",
        ".B \\-v, \\-\\-verbose",
        "Show the cluster and libvirt commands kvmha runs on your behalf, on standard error.",
        ".TP",
        ".B \\-\\-version",
        "Print the version.",
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
    out.append(".SH EXIT STATUS")
    out.append(_roff(f"Unless listed below: {DEFAULT_EXIT}. Interrupted: 130."))
    out += _pairs([(f"kvmha {' '.join(p)}", exit_status(p)) for p, _c in _commands(cli, [])])
    out.append(".SH ENVIRONMENT")
    out += _pairs(ENVIRONMENT)
    out.append(".SH FILES")
    out += _pairs(FILES)
    out.append(".SH EXAMPLES")
    for text, command in EXAMPLES:
        out += [".PP", _roff(text), ".PP", ".RS", ".nf", _roff(command), ".fi", ".RE"]
    out += [
        ".SH SEE ALSO",
        "kvmha\\-fence\\-listener(8), fence_kvmha(8), pcs(8), crm_mon(8), virsh(1)",
        "",
    ]
    return "\n".join(out)


def render_listener() -> str:
    from kvmha.fence import listener

    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
        listener.main(["--help"])
    doc = (listener.__doc__ or "").strip()
    first, _, rest = doc.partition("\n")
    out = [
        f'.TH KVMHA\\-FENCE\\-LISTENER 8 "" "kvmha {__version__}" "kvmha manual"',
        ".SH NAME",
        _roff(first.replace(":", " \\-", 1) if ":" in first else first),
        ".SH SYNOPSIS",
        ".B kvmha\\-fence\\-listener",
        "[\\fB\\-\\-config\\fR \\fIFILE\\fR] [\\fB\\-\\-check\\fR]",
        ".SH DESCRIPTION",
    ]
    for para in rest.strip().split("\n\n"):
        if para.startswith("    "):  # a literal block (the configuration's example)
            out += [".PP", ".nf", _roff(para), ".fi"]
        else:
            out += [".PP", _roff(para.replace("::", ":"))]
    out += [".SH OPTIONS", ".nf", _roff(help_text.getvalue().strip()), ".fi"]
    out += [
        ".SH EXIT STATUS",
        ".TP\n.B 0\nstopped cleanly (SIGTERM, SIGINT), or --check found the configuration good",
        ".TP\n.B 1\ncould not listen on the configured address",
        ".TP\n.B 6\nnot configured: the configuration or the hosts' key is missing or bad "
        "(the error names the line and the fix)",
        ".SH FILES",
        *_pairs(FILES[:4]),
        ".SH SEE ALSO",
        "fence_kvmha(8), kvmha(1), kvmha fence key create",
        "",
    ]
    return "\n".join(out)


def render_fence_agent() -> str:
    from kvmha.fence import agent

    return agent.manpage()


PAGES = {
    "kvmha": render_kvmha,
    "kvmha-fence-listener": render_listener,
    "fence_kvmha": render_fence_agent,
}


def render(page: str = "kvmha") -> str:
    return PAGES[page]()


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "kvmha"
    if name not in PAGES:
        sys.exit(f"kvmha.tools.manpage: unknown page {name!r}: one of {', '.join(PAGES)}")
    sys.stdout.write(render(name))
