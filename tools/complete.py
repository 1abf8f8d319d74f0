"""Shell completion of names: guests, hosts and data centres from the cluster (through
kvmha.pcmk), fence keys from this host's listener configuration.

A completion never fails and never hangs the shell for long: any problem (no cluster
here, no permission) completes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import click
from click.shell_completion import CompletionItem

Names = Callable[[], Iterable[str]]


def _complete(names: Names) -> Callable[[click.Context, click.Parameter, str], list[Any]]:
    def complete(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
        try:
            found = sorted(set(names()))
        except (Exception, SystemExit):  # completion must never break the shell
            return []
        return [CompletionItem(n) for n in found if n.startswith(incomplete)]

    return complete


def guest_names() -> list[str]:
    from kvmha import pcmk
    from kvmha.guests import guest_primitives

    return list(guest_primitives(pcmk.query_cib()))


def host_names() -> list[str]:
    from kvmha import pcmk

    return pcmk.node_names(pcmk.query_cib())


def dc_names() -> list[str]:
    from kvmha import datacentre, pcmk

    return datacentre.names(pcmk.query_cib())


def key_names() -> list[str]:
    """The guest-cluster keys in this host's listener's keys directory."""
    from kvmha.fence.listener import DEFAULT_CONFIG, Config

    path = os.environ.get("KVMHA_FENCE_CONFIG", DEFAULT_CONFIG)
    keys_dir = Config.load(path).keys_dir
    return [f[: -len(".key")] for f in os.listdir(keys_dir) if f.endswith(".key")]


complete_guests = _complete(guest_names)
complete_hosts = _complete(host_names)
complete_dcs = _complete(dc_names)
complete_keys = _complete(key_names)
