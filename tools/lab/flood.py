"""Unauthenticated connections to a fence listener (or fence_virtd), for tests and benches.

Run inside a lab namespace (``nsenter -t PID -n``), never against anything but a lab
address. Kinds:

* ``hello``: a hello under a made-up key, read the refusal, reconnect (the listener's
  bad-auth path, as fast as it answers);
* ``bytes``: 512 random bytes, close (for fence_virtd, which has no hello);
* ``hold``: connect and send nothing until the listener closes the connection (its
  per-frame deadline), then reconnect: this is what fills connection slots.

``--source ADDR`` (repeatable) binds each connection to one of the given local addresses
in turn, so one process floods from several addresses (the per-source limit). Every 5 s
it prints the number of connections completed so far. It runs until killed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import sys
import threading
import time

KINDS = ("hello", "bytes", "hold")


def _one(host: str, port: int, kind: str, source: str | None, count: list[int]) -> None:
    from kvmha.fence import agent

    src = (source, 0) if source else None
    while True:
        try:
            s = socket.create_connection((host, port), timeout=2, source_address=src)
        except OSError:
            time.sleep(0.01)
            continue
        try:
            if kind == "hello":
                hello = {
                    "type": "hello",
                    "proto": agent.PROTOCOL,
                    "key": "flood-" + os.urandom(4).hex(),
                    "nc": os.urandom(32).hex(),
                }
                agent.send_frame(s, hello, time.monotonic() + 2)
                s.settimeout(2)
                s.recv(4096)
            elif kind == "bytes":
                s.sendall(os.urandom(512))
            else:
                s.settimeout(60)
                while s.recv(4096):
                    pass
            count[0] += 1
        except OSError:
            time.sleep(0.01)
        finally:
            s.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kvmha.tools.lab.flood")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("kind", choices=KINDS)
    p.add_argument("connections", type=int, help="connections kept in flight")
    p.add_argument("--source", action="append", default=[], help="local address to bind")
    a = p.parse_args(argv)
    count = [0]
    sources = itertools.cycle(a.source or [None])
    for _ in range(a.connections):
        args = (a.host, a.port, a.kind, next(sources), count)
        threading.Thread(target=_one, args=args, daemon=True).start()
    while True:
        time.sleep(5)
        print(count[0], flush=True)


if __name__ == "__main__":
    sys.exit(main())
