"""The ``kvmha`` command: ``kvmha <noun> <verb>``, and its conventions in one place.

- Every error is one line on stderr, ``kvmha: error: ...``, and a ``kvmha: fix: ...`` line
  when there is something to do; usage errors too (an unknown command, with the closest
  one suggested; a missing argument; a bad option value), never click's usage block.
  Under ``--json`` the error is also a JSON document on stdout (docs/schemas/error.v1.json).
- ``-h`` and ``--help`` everywhere; ``-v``/``--verbose`` (or ``KVMHA_VERBOSE=1``) shows
  the cluster and libvirt commands kvmha runs on the user's behalf, on stderr.
- Exit codes: 0 success, 1 failure, 2 bad input (unknown names, values out of range);
  ``doctor`` and ``net check`` answer with a verdict instead (0-2) and 3 when they could
  not run. Nothing escapes as a traceback.

The nouns live in their own modules (``*_cli.py``), registered at the end of this file.
The lab's verbs (``kvmha lab``) ship apart, in the kvmha-lab package: they are added only
where that package is installed, and nothing here imports it otherwise.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Optional

import click

from kvmha.tools.clibase import CONTEXT_SETTINGS, Group, verbose_option

__all__ = ["Group", "main"]


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="kvmha")
@verbose_option
def main() -> None:
    """High availability for KVM guests on Pacemaker/Corosync and libvirt."""


# Commands that ship in a package of their own: added when that package is installed.
OPTIONAL_COMMANDS = ("kvmha.tools.lab.cli:lab",)


def _optional(spec: str) -> Optional[click.Command]:
    module, _, attr = spec.partition(":")
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except ModuleNotFoundError:  # its parent package is not installed either
        return None
    cmd = getattr(importlib.import_module(module), attr)
    return cmd if isinstance(cmd, click.Command) else None


def _register() -> None:
    from kvmha.tools.cluster_cli import completion, dc, guest, status
    from kvmha.tools.doctor_cli import doctor
    from kvmha.tools.events_cli import events
    from kvmha.tools.fence_cli import fence
    from kvmha.tools.net_cli import net

    for cmd in (status, guest, dc, doctor, fence, net, completion, events):
        main.add_command(cmd)
    for spec in OPTIONAL_COMMANDS:
        opt = _optional(spec)
        if opt is not None:
            main.add_command(opt)


_register()

if __name__ == "__main__":
    main(prog_name="kvmha")
