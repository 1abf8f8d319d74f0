"""Real traffic without ping or tcpdump: raw ICMP echo flows and AF_PACKET capture points,
all driven by one select() loop in this process (sockets opened inside each namespace)."""

from __future__ import annotations

import dataclasses
import os
import select
import socket
import struct
import time
from typing import Any, Optional

from kvmha.netcfg import nsutil

PAYLOAD = b"kvmha-net-probe!" * 2


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = int(sum(struct.unpack(f"!{len(b) // 2}H", b)))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return (~s) & 0xFFFF


def mac_str(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def parse_frame(data: bytes, pkttype: int) -> dict[str, Any]:
    """Ethernet header plus ARP or IPv4/ICMP fields, as far as present."""
    f: dict[str, Any] = {
        "dir": "out" if pkttype == socket.PACKET_OUTGOING else "in",
        "dst": mac_str(data[0:6]),
        "src": mac_str(data[6:12]),
        "type": struct.unpack("!H", data[12:14])[0],
    }
    p = data[14:]
    if f["type"] == 0x0806 and len(p) >= 28:
        f["arp_op"] = struct.unpack("!H", p[6:8])[0]
        f["arp_sha"] = mac_str(p[8:14])
        f["arp_spa"] = socket.inet_ntoa(p[14:18])
        f["arp_tpa"] = socket.inet_ntoa(p[24:28])
    elif f["type"] == 0x0800 and len(p) >= 20:
        ihl = (p[0] & 0x0F) * 4
        f["ip_src"] = socket.inet_ntoa(p[12:16])
        f["ip_dst"] = socket.inet_ntoa(p[16:20])
        if p[9] == 1 and len(p) >= ihl + 8:
            f["icmp_type"] = p[ihl]
    return f


@dataclasses.dataclass
class _Flow:
    src_ns: str
    dst: str
    sock: socket.socket
    ident: int
    seq: int = 0
    replies: dict[int, int] = dataclasses.field(default_factory=dict)
    errors: set[int] = dataclasses.field(default_factory=set)


def run_traffic(
    flows: list[tuple[str, str]],
    capture: list[tuple[str, str]],
    count: int = 20,
    interval: float = 0.05,
    duration: Optional[float] = None,
    wait: float = 0.7,
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """flows: (source netns, destination IP); each sends `count` echo requests every
    `interval` s (or for `duration` s). capture: (netns, ifname) points. Returns per-flow
    results (sent, lost, duplicate replies) and the frames seen at each capture point."""
    icmp: dict[str, socket.socket] = {}
    caps: dict[int, tuple[socket.socket, str, list[tuple[bytes, int]]]] = {}
    try:
        for ns, ifn in capture:
            with nsutil.entered(ns):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
                s.bind((ifn, 0))
            caps[s.fileno()] = (s, f"{ns}/{ifn}", [])
        fl: list[_Flow] = []
        for i, (ns, dst) in enumerate(flows):
            if ns not in icmp:
                with nsutil.entered(ns):
                    icmp[ns] = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            fl.append(_Flow(ns, dst, icmp[ns], (os.getpid() + 7919 * (i + 1)) & 0xFFFF))
        if duration:
            count = max(1, int(duration / interval))
        by_fd = {s.fileno(): s for s in icmp.values()}
        next_send = time.monotonic()
        deadline: Optional[float] = None
        while True:
            now = time.monotonic()
            if deadline is None and now >= next_send:
                for f in fl:
                    f.seq += 1
                    hdr = struct.pack("!BBHHH", 8, 0, 0, f.ident, f.seq)
                    pkt = struct.pack("!BBHHH", 8, 0, _csum(hdr + PAYLOAD), f.ident, f.seq)
                    try:
                        f.sock.sendto(pkt + PAYLOAD, (f.dst, 0))
                    except OSError as exc:
                        f.errors.add(exc.errno or 0)
                next_send = now + interval
                if fl and fl[0].seq >= count:
                    deadline = now + wait
            if deadline is not None and now >= deadline:
                break
            tmo = (deadline if deadline is not None else next_send) - now
            ready, _, _ = select.select([*by_fd, *caps], [], [], max(0.0, tmo))
            for fd in ready:
                if fd in caps:
                    s, _point, frames = caps[fd]
                    data, addr = s.recvfrom(2048)
                    frames.append((data[:64], addr[2]))
                    continue
                data, addr = by_fd[fd].recvfrom(4096)
                ihl = (data[0] & 0x0F) * 4
                if len(data) < ihl + 8 or data[ihl] != 0:
                    continue
                rid, rseq = struct.unpack("!HH", data[ihl + 4 : ihl + 8])
                for f in fl:
                    if f.ident == rid and f.dst == addr[0]:
                        f.replies[rseq] = f.replies.get(rseq, 0) + 1
        results = []
        for f in fl:
            lost = [i for i in range(1, f.seq + 1) if not f.replies.get(i)]
            results.append(
                {
                    "flow": f"{f.src_ns}->{f.dst}",
                    "sent": f.seq,
                    "lost": len(lost),
                    "dups": sum(max(0, n - 1) for n in f.replies.values()),
                    "send_errors": sorted(f.errors),
                }
            )
        seen = {
            point: [parse_frame(d, t) for d, t in frames] for _s, point, frames in caps.values()
        }
        return results, seen
    finally:
        for s in [*icmp.values(), *(c[0] for c in caps.values())]:
            s.close()
