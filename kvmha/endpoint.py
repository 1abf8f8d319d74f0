"""``HOST:PORT`` as people write it: the one parser for listener addresses, health-check
endpoints and migration targets.

``name:port``, ``1.2.3.4:port`` and ``[v6addr]:port``; a bare name or bracketed/bare IPv6
address takes the default port when the caller has one. Standard library only.
"""

from __future__ import annotations

from typing import Optional, Tuple

HostPort = Tuple[str, int]


def split_host_port(text: str, default_port: Optional[int] = None) -> Optional[HostPort]:
    """(host, port), or None when text is malformed or has no port and there is no default.

    >>> split_host_port("[fe80::1]:1229"), split_host_port("h1", 1229), split_host_port("h1")
    (('fe80::1', 1229), ('h1', 1229), None)
    """
    text = text.strip()
    port_text: Optional[str]
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:  # a name, an IPv4 address, or a bare IPv6 address: no port given
        host, port_text = text, None
    if not host or any(c.isspace() for c in host):
        return None
    if port_text is None:
        return None if default_port is None else (host, default_port)
    if not port_text.isdigit():
        return None
    port = int(port_text)
    return (host, port) if 0 < port < 65536 else None
