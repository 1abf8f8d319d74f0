"""``kvmha net probe``: build a throwaway topology in network namespaces and prove with
real traffic whether a bond mode carries bridged guests' traffic.

Topology (namespaces kn-p<PID>-*, all removed at the end, on errors and on Ctrl-C)::

  guest0 g0 52:54:00:00:00:10 10.0.0.10 -- h-vm0 --+
  guest1 g1 52:54:00:00:00:11 10.0.0.11 -- h-vm1 --+-- br0 10.0.0.1/24   (host)
                                                   |
                                   bond0 = h-eth0 + h-eth1   (the mode under test)
                                             |        |
  switch                                    s-p0     s-p1    independent ports, a static
                                              \\      /       LAG (balance-xor bond) or an
                                         sw0 (bridge)         LACP LAG (802.3ad bond)
  peer0 p0 10.0.0.100 -- s-peer0 --------------+
  peer1 p1 10.0.0.101 -- s-peer1 --------------+

Phases: cold guests->peers, peers->guests, host->peers, peers->host (ARP caches flushed
first, so ARP crosses the bond); a soak on all flows longer than the 10 s TX rebalance of
balance-tlb/alb; then the switch port of the active (or busiest) link goes down and every
flow runs again. Packet captures at peers and guests show which MAC the peers see for the
guests; the host bridge's and the switch's FDB and the peers' ARP caches are read.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from kvmha.errors import KvmhaError, UsageError
from kvmha.netcfg import check, kernel, nsutil
from kvmha.netcfg.links import BOND_MODES, MODE_NUMBERS, ZERO_MAC
from kvmha.netcfg.traffic import run_traffic

Progress = Callable[[str], None]
SWITCH_KINDS = ("independent", "static", "lacp")
# The switch side each mode is made for (bonding.rst, "Switch Configuration").
DESIGNED_SWITCH = {
    0: "static",
    1: "independent",
    2: "static",
    3: "static",
    4: "lacp",
    5: "independent",
    6: "independent",
}
# What check's verdict must be, given the probe's verdict, for the two to agree.
AGREES = {"pass": "ok", "warn": "warning", "fail": "incompatible"}

PREFIX = "kn-p"
GUESTS = (
    ("guest0", "g0", "h-vm0", "52:54:00:00:00:10", "10.0.0.10"),
    ("guest1", "g1", "h-vm1", "52:54:00:00:00:11", "10.0.0.11"),
)
PEERS = (
    ("peer0", "p0", "s-peer0", "02:00:00:00:00:d0", "10.0.0.100"),
    ("peer1", "p1", "s-peer1", "02:00:00:00:00:d1", "10.0.0.101"),
)
IP_HOST = "10.0.0.1"
MAC = {
    "h-eth0": "02:00:00:00:00:a0",
    "h-eth1": "02:00:00:00:00:a1",
    "s-p0": "02:00:00:00:00:c0",
    "s-p1": "02:00:00:00:00:c1",
    "h-vm0": "fe:54:00:00:00:10",
    "h-vm1": "fe:54:00:00:00:11",
    "s-peer0": "02:00:00:00:00:c2",
    "s-peer1": "02:00:00:00:00:c3",
}
for _ns, _if, _hp, _mac, _ip in GUESTS + PEERS:
    MAC[_if] = _mac
MIIMON = 100


def parse_modes(text: str) -> list[int]:
    t = text.strip().lower()
    if t == "all":
        return list(BOND_MODES)
    out = []
    for part in t.split(","):
        part = part.strip()
        if part.isdigit() and int(part) in BOND_MODES:
            out.append(int(part))
        elif part in MODE_NUMBERS:
            out.append(MODE_NUMBERS[part])
        else:
            raise UsageError(
                f"unknown bond mode {part!r}",
                "give 0-6, a name such as active-backup, or all",
            )
    return out


def parse_switch(text: str) -> Optional[list[str]]:
    """None means: for each mode the switch it is designed for."""
    t = text.strip().lower()
    if t in ("designed", "auto", "default"):
        return None
    if t == "all":
        return list(SWITCH_KINDS)
    out = []
    for part in t.split(","):
        if part not in SWITCH_KINDS:
            raise UsageError(
                f"unknown switch kind {part!r}", "give independent, static, lacp, all or designed"
            )
        out.append(part)
    return out


class Names:
    """The namespaces of one probe process."""

    def __init__(self, pid: int | None = None) -> None:
        base = f"{PREFIX}{pid or os.getpid()}-"
        self.host = base + "host"
        self.switch = base + "sw"
        self.guests = [base + g[0] for g in GUESTS]
        self.peers = [base + p[0] for p in PEERS]
        self.all = [self.host, self.switch, *self.guests, *self.peers]


def remove_stale() -> list[str]:
    """Remove probe namespaces left by probe processes that no longer exist."""
    gone = []
    for name in nsutil.listnetns():
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            nsutil.remove(name)
            gone.append(name)
    return gone


def teardown(names: Names) -> None:
    for ns in names.all:
        with contextlib.suppress(OSError):
            nsutil.remove(ns)


# ---------------------------------------------------------------------------
# kernel support
# ---------------------------------------------------------------------------
def has_bonding() -> bool:
    return os.path.isdir("/sys/module/bonding") or os.path.exists("/sys/class/net/bonding_masters")


def ensure_drivers(moddir: Optional[Path] = None) -> None:
    """bonding (and bridge, veth, 8021q) loaded, or a KvmhaError that says what to do."""
    if moddir is not None:
        kernel.load_modules(
            ["bridge", "veth", "bonding", "8021q"], moddir, {"bonding": "max_bonds=0"}
        )
    elif not has_bonding() and any(
        os.access(p, os.X_OK) for p in ("/usr/sbin/modprobe", "/sbin/modprobe")
    ):
        from kvmha.process import run

        run(["modprobe", "bonding", "max_bonds=0"], check=False, timeout=30)
    if not has_bonding():
        raise KvmhaError(
            f"the running kernel ({os.uname().release}) has no bonding driver",
            "boot one that has it under QEMU: kvmha net probe --kernel PATH "
            "(python3 -m kvmha.netcfg.kernel fetches Debian's and prints its PATH)",
        )


# ---------------------------------------------------------------------------
# topology
# ---------------------------------------------------------------------------
def _idx(r: Any, name: str) -> int:
    found = r.link_lookup(ifname=name)
    if not found:
        raise KvmhaError(f"probe: link {name} is missing")
    return int(found[0])


def _veth(r: Any, a: str, b: str, b_ns: str) -> None:
    """veth a<->b made inside a namespace (udev never sees it, so it cannot rewrite the
    MACs), b moved to b_ns, MACs set after the move."""
    r.link("add", ifname=a, kind="veth", peer={"ifname": b})
    r.link("set", index=_idx(r, a), address=MAC[a])
    r.link("set", index=_idx(r, b), net_ns_fd=b_ns)
    rb = nsutil.iproute(b_ns)
    try:
        rb.link("set", index=_idx(rb, b), address=MAC[b])
    finally:
        rb.close()


def build(names: Names, mode: int, switch: str) -> None:
    for ns in names.all:
        nsutil.create(ns)
        for k in ("all", "default"):
            nsutil.sysctl(ns, f"net/ipv6/conf/{k}/disable_ipv6", 1)
    r = nsutil.iproute(names.host)
    try:
        _veth(r, "h-eth0", "s-p0", names.switch)
        _veth(r, "h-eth1", "s-p1", names.switch)
        for gns, g in zip(names.guests, GUESTS):
            _veth(r, g[2], g[1], gns)
        battrs: dict[str, Any] = {"bond_mode": mode, "bond_miimon": MIIMON}
        if mode == 4:
            battrs["bond_ad_lacp_rate"] = 1
        r.link("add", ifname="bond0", kind="bond", **battrs)
        bond = _idx(r, "bond0")
        for s in ("h-eth0", "h-eth1"):
            r.link("set", index=_idx(r, s), master=bond)
        r.link("add", ifname="br0", kind="bridge", br_stp_state=0, br_forward_delay=0)
        br = _idx(r, "br0")
        r.link("set", index=bond, master=br)
        for g in GUESTS:
            r.link("set", index=_idx(r, g[2]), master=br)
        for n in ["h-eth0", "h-eth1", "bond0", "br0", "lo"] + [g[2] for g in GUESTS]:
            r.link("set", index=_idx(r, n), state="up")
        r.addr("add", index=br, address=IP_HOST, prefixlen=24)
    finally:
        r.close()
    r = nsutil.iproute(names.switch)
    try:
        for pns, p in zip(names.peers, PEERS):
            _veth(r, p[2], p[1], pns)
        r.link("add", ifname="sw0", kind="bridge", br_stp_state=0, br_forward_delay=0)
        sw = _idx(r, "sw0")
        ports = [p[2] for p in PEERS]
        if switch == "independent":
            ports += ["s-p0", "s-p1"]
        else:
            sattrs: dict[str, Any] = {
                "bond_mode": 2 if switch == "static" else 4,
                "bond_miimon": MIIMON,
            }
            if switch == "lacp":
                sattrs["bond_ad_lacp_rate"] = 1
            r.link("add", ifname="sw-bond", kind="bond", **sattrs)
            sb = _idx(r, "sw-bond")
            for s in ("s-p0", "s-p1"):
                r.link("set", index=_idx(r, s), master=sb)
                r.link("set", index=_idx(r, s), state="up")
            ports.append("sw-bond")
        for p_ in ports:
            r.link("set", index=_idx(r, p_), master=sw)
            r.link("set", index=_idx(r, p_), state="up")
        r.link("set", index=sw, state="up")
    finally:
        r.close()
    for ns, spec in zip([*names.guests, *names.peers], [*GUESTS, *PEERS]):
        r = nsutil.iproute(ns)
        try:
            i = _idx(r, spec[1])
            r.link("set", index=i, state="up")
            r.link("set", index=_idx(r, "lo"), state="up")
            r.addr("add", index=i, address=spec[4], prefixlen=24)
        finally:
            r.close()


# ---------------------------------------------------------------------------
# state readers
# ---------------------------------------------------------------------------
def bond_state(ns: str, name: str) -> dict[str, Any]:
    from kvmha.netcfg import links

    snap = links.read(ns)
    bond = snap.by_name(name)
    if bond is None or bond.bond is None:
        raise KvmhaError(f"probe: no bond {name} in {ns}")
    b = bond.bond
    active = snap.links.get(b.active_slave) if b.active_slave else None
    slaves = {
        x.name: {
            "mac": x.address,
            "state": x.bond_slave.state if x.bond_slave else None,
            "mii_up": (x.bond_slave.mii_status == 0) if x.bond_slave else None,
            "aggregator": x.bond_slave.ad_aggregator_id if x.bond_slave else None,
        }
        for x in snap.links.values()
        if x.master == bond.index
    }
    return {
        "operstate": bond.operstate,
        "mac": bond.address,
        "mode": b.mode,
        "active_slave": active.name if active else None,
        "ad_num_ports": b.ad_num_ports,
        "ad_partner_mac": b.ad_partner_mac,
        "ad_aggregator": b.ad_aggregator,
        "slaves": slaves,
    }


def wait_ready(
    names: Names, mode: int, switch: str, timeout: float = 20.0
) -> tuple[bool, float, dict[str, Any]]:
    t = time.monotonic()
    st: dict[str, Any] = {}
    while time.monotonic() - t < timeout:
        st = bond_state(names.host, "bond0")
        up = st["operstate"] == "UP" and all(s["mii_up"] for s in st["slaves"].values())
        if mode == 4 and switch == "lacp":
            up = up and st["ad_num_ports"] == 2 and st["ad_partner_mac"] not in (None, ZERO_MAC)
        elif mode == 4 or switch == "lacp":
            # 802.3ad without a partner falls back to one port after the LACP timeout
            up = up and time.monotonic() - t > 3.5
        if up:
            return True, round(time.monotonic() - t, 2), st
        time.sleep(0.2)
    return False, round(time.monotonic() - t, 2), st


def fdb(ns: str, bridge: str) -> dict[str, list[str]]:
    """{MAC: [ports]} learned on `bridge` in netns `ns`."""
    r = nsutil.iproute(ns)
    try:
        br = _idx(r, bridge)
        names = {int(x["index"]): x.get_attr("IFLA_IFNAME") for x in r.get_links()}
        out: dict[str, list[str]] = {}
        for e in r.fdb("dump"):
            if e.get_attr("NDA_MASTER") == br:
                out.setdefault(e.get_attr("NDA_LLADDR"), []).append(names.get(e["ifindex"], "?"))
        return out
    finally:
        r.close()


def neighbours(ns: str) -> dict[str, Optional[str]]:
    r = nsutil.iproute(ns)
    try:
        return {
            n.get_attr("NDA_DST"): n.get_attr("NDA_LLADDR")
            for n in r.get_neighbours()
            if n.get_attr("NDA_DST")
        }
    finally:
        r.close()


def neigh_flush(ns: str) -> None:
    r = nsutil.iproute(ns)
    try:
        for n in r.get_neighbours():
            if n.get_attr("NDA_DST"):
                # an entry that went away on its own is fine
                with contextlib.suppress(Exception):
                    r.neigh("del", dst=n.get_attr("NDA_DST"), ifindex=n["ifindex"])
    finally:
        r.close()


def tx_packets(ns: str, ifnames: tuple[str, ...]) -> dict[str, int]:
    r = nsutil.iproute(ns)
    try:
        return {
            s: int(r.link("get", index=_idx(r, s))[0].get_attr("IFLA_STATS64")["tx_packets"])
            for s in ifnames
        }
    finally:
        r.close()


class Kmsg:
    """Kernel log lines written after creation (for 'own address as source')."""

    def __init__(self) -> None:
        self.fd: Optional[int]
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = None

    def read(self) -> list[str]:
        lines: list[str] = []
        while self.fd is not None:
            try:
                rec = os.read(self.fd, 8192).decode(errors="replace")
            except BlockingIOError:
                break
            except BrokenPipeError:
                continue
            except OSError:
                break
            lines.append(rec.split(";", 1)[-1].strip())
        return lines

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------------------
# one mode against one switch kind
# ---------------------------------------------------------------------------
def analyse(
    names: Names,
    phase: str,
    flows: list[dict[str, Any]],
    caps: dict[str, list[dict[str, Any]]],
    expect: dict[str, str],
) -> dict[str, Any]:
    guest_mac = dict(zip(names.guests, (g[3] for g in GUESTS)))
    ph: dict[str, Any] = {
        "phase": phase,
        "flows": flows,
        "peer_seen_src_macs": {},
        "wrong_src_macs": {},
        "looped_own_frames": {},
    }
    for point, frames in caps.items():
        ns = point.split("/")[0]
        for f in frames:
            if f["dir"] != "in":
                continue
            if ns in guest_mac:
                if f["src"] == guest_mac[ns]:
                    ph["looped_own_frames"][ns] = ph["looped_own_frames"].get(ns, 0) + 1
                continue
            ip = f.get("arp_spa") or f.get("ip_src")
            if ip not in expect:
                continue
            key = f["src"] + (f" arp-sha={f['arp_sha']}" if "arp_sha" in f else "")
            d = ph["peer_seen_src_macs"].setdefault(ip, {})
            d[key] = d.get(key, 0) + 1
            if f["src"] != expect[ip] or f.get("arp_sha", expect[ip]) != expect[ip]:
                w = ph["wrong_src_macs"].setdefault(ip, {})
                w[key] = w.get(key, 0) + 1
    gm = set(guest_mac.values())
    ph["host_fdb_guests"] = {m: p for m, p in fdb(names.host, "br0").items() if m in gm}
    ph["switch_fdb"] = {
        m: p for m, p in fdb(names.switch, "sw0").items() if m in gm | {expect[IP_HOST]}
    }
    ph["peer_arp"] = {
        pns: {ip: mac for ip, mac in neighbours(pns).items() if ip in expect} for pns in names.peers
    }
    return ph


def judge(result: dict[str, Any]) -> None:
    """pass / warn / fail from the evidence, with the reasons in evidence['issues']."""
    ev = result["evidence"]
    fail: list[str] = []
    warn: list[str] = []
    guest_ips = {g[4]: g[3] for g in GUESTS}
    for p in ev["phases"]:
        tag = p["phase"]
        lost = sum(f["lost"] for f in p["flows"])
        sent = sum(f["sent"] for f in p["flows"])
        if lost:
            bad = ",".join(f["flow"] for f in p["flows"] if f["lost"])
            fail.append(f"{tag}: {lost}/{sent} lost ({bad})")
        dups = sum(f["dups"] for f in p["flows"])
        if dups:
            warn.append(f"{tag}: {dups} duplicate replies")
        for ip, d in p["wrong_src_macs"].items():
            if ip in guest_ips:
                fail.append(f"{tag}: guest {ip} frames arrived with source MAC {sorted(d)}")
            else:
                warn.append(f"{tag}: host {ip} frames arrived with source MAC {sorted(d)}")
        if p["looped_own_frames"]:
            warn.append(f"{tag}: guests got their own frames back {p['looped_own_frames']}")
        wrong = {m: ports for m, ports in p["host_fdb_guests"].items() if "bond0" in ports}
        if wrong:
            fail.append(f"{tag}: br0 learned guest MAC(s) on bond0 {wrong}")
        for pns, arp in p["peer_arp"].items():
            for ip, mac in arp.items():
                if ip in guest_ips and mac and mac != guest_ips[ip]:
                    fail.append(f"{tag}: {pns} ARP cache {ip} -> {mac}")
    if not ev.get("bond_ready", True):
        fail.append("bond not ready (or LACP not converged) in time")
    if result["mode"] == 4 and (ev.get("bond_state") or {}).get("ad_partner_mac") in (
        None,
        ZERO_MAC,
    ):
        warn.append("802.3ad: no LACP partner, the bond fell back to one port (no aggregation)")
    own = [x for x in ev.get("kmsg", []) if "own address as source" in x]
    if own:
        warn.append(f"kernel: {len(own)} x '{own[0][:100]}'")
    ev["issues"] = fail + warn
    result["verdict"] = "fail" if fail else "warn" if warn else "pass"


def probe_one(
    names: Names,
    mode: int,
    switch: str,
    soak: float = 11.0,
    failover: bool = True,
    count: int = 20,
    progress: Progress = lambda _m: None,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "mode": mode,
        "mode_name": BOND_MODES[mode],
        "switch": switch,
        "designed_switch": DESIGNED_SWITCH[mode],
        "verdict": "fail",
    }
    ev: dict[str, Any] = {"timings": {}, "phases": []}
    result["evidence"] = ev
    tm = ev["timings"]
    km = Kmsg()
    t0 = time.monotonic()
    try:
        build(names, mode, switch)
        tm["build_s"] = round(time.monotonic() - t0, 2)
        progress(f"  topology built in {tm['build_s']} s")
        ok, tm["ready_s"], st = wait_ready(names, mode, switch)
        ev["bond_ready"] = ok
        ev["bond_state"] = st
        t1 = time.monotonic()
        rep = check.check(names.host)
        tm["check_s"] = round(time.monotonic() - t1, 2)
        br0 = next(b for b in rep["bridges"] if b["name"] == "br0")
        ev["check"] = {"verdict": br0["verdict"], "codes": [f["code"] for f in br0["findings"]]}
        progress(f"  bond ready {ok} after {tm['ready_s']} s, check says {br0['verdict']}")
        expect = {g[4]: g[3] for g in GUESTS}
        expect[IP_HOST] = str(st.get("mac") or "")
        # the bridge's MAC is the host's source MAC
        r = nsutil.iproute(names.host)
        try:
            expect[IP_HOST] = r.link("get", index=_idx(r, "br0"))[0].get_attr("IFLA_ADDRESS")
        finally:
            r.close()
        capture = [(ns, p[1]) for ns, p in zip(names.peers, PEERS)] + [
            (ns, g[1]) for ns, g in zip(names.guests, GUESTS)
        ]
        g2p = [(gns, p[4]) for gns in names.guests for p in PEERS]
        p2g = [(pns, g[4]) for g in GUESTS for pns in names.peers]
        h2p = [(names.host, p[4]) for p in PEERS]
        p2h = [(pns, IP_HOST) for pns in names.peers]
        plan = [
            ("cold guests->peers", g2p, names.guests),
            ("cold peers->guests", p2g, names.peers),
            ("cold host->peers", h2p, [names.host]),
            ("cold peers->host", p2h, names.peers),
        ]
        t1 = time.monotonic()
        for name, flows, flush in plan:
            for ns in flush:
                neigh_flush(ns)
            res, caps = run_traffic(flows, capture, count=count)
            ev["phases"].append(analyse(names, name, res, caps, expect))
        tm["cold_s"] = round(time.monotonic() - t1, 2)
        progress(f"  cold phases done in {tm['cold_s']} s")
        if soak:
            t1 = time.monotonic()
            res, caps = run_traffic(g2p + h2p, capture, duration=soak, interval=0.1)
            ev["phases"].append(analyse(names, f"soak {soak:.0f}s all flows", res, caps, expect))
            tm["soak_s"] = round(time.monotonic() - t1, 2)
            progress(f"  soak done in {tm['soak_s']} s")
        ev["slave_tx_packets"] = tx_packets(names.host, ("h-eth0", "h-eth1"))
        if failover:
            t2 = time.monotonic()
            st2 = bond_state(names.host, "bond0")
            victim = st2.get("active_slave")
            if not victim:  # no active slave in this mode: the busier link
                tx = tx_packets(names.host, ("h-eth0", "h-eth1"))
                victim = max(tx, key=lambda k: tx[k])
            sw_port = {"h-eth0": "s-p0", "h-eth1": "s-p1"}[victim]
            ev["failover"] = f"switch port {sw_port} (link of {victim}) set down"
            r = nsutil.iproute(names.switch)
            try:
                r.link("set", index=_idx(r, sw_port), state="down")
            finally:
                r.close()
            time.sleep(1.0)  # miimon 100 ms: the bond has failed over well within 1 s
            res, caps = run_traffic(g2p + p2g + h2p, capture, count=count)
            ev["phases"].append(analyse(names, "after failover all flows", res, caps, expect))
            ev["bond_state_after_failover"] = bond_state(names.host, "bond0")
            tm["failover_s"] = round(time.monotonic() - t2, 2)
        ev["kmsg"] = [x for x in km.read() if "bond" in x or "br0" in x][-40:]
    finally:
        km.close()
        t3 = time.monotonic()
        teardown(names)
        tm["teardown_s"] = round(time.monotonic() - t3, 2)
        tm["total_s"] = round(time.monotonic() - t0, 2)
    judge(result)
    ev["check_agrees"] = ev["check"]["verdict"] == AGREES[result["verdict"]]
    return result


def run(
    modes: list[int],
    switches: Optional[list[str]],
    soak: float = 11.0,
    failover: bool = True,
    progress: Progress = lambda _m: None,
    moddir: Optional[Path] = None,
) -> dict[str, Any]:
    """Probe every mode against its designed switch (switches None) or the given kinds."""
    if os.geteuid() != 0:
        raise KvmhaError("kvmha net probe needs root (network namespaces, raw sockets)")
    t0 = time.monotonic()
    ensure_drivers(moddir)
    progress(f"bonding driver ready ({time.monotonic() - t0:.1f} s)")
    names = Names()
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()
    with nsutil.sigterm_as_interrupt():
        try:
            for stale in remove_stale():
                progress(f"removed namespace {stale} left by an earlier probe")
            for mode in modes:
                for sw in switches or [DESIGNED_SWITCH[mode]]:
                    progress(f"mode {mode} ({BOND_MODES[mode]}), switch {sw}")
                    r = probe_one(names, mode, sw, soak, failover, progress=progress)
                    progress(
                        f"  -> {r['verdict']} in {r['evidence']['timings']['total_s']} s"
                        + "".join(f"\n     {i[:200]}" for i in r["evidence"]["issues"])
                    )
                    results.append(r)
        finally:
            teardown(names)
    return {
        "kernel": os.uname().release,
        "pyroute2": pyroute2_version(),
        "total_s": round(time.monotonic() - t0, 1),
        "results": results,
    }


def pyroute2_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("pyroute2")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"kernel {report['kernel']}, {len(report['results'])} run(s) in {report['total_s']} s",
        f"{'MODE':4} {'NAME':13} {'SWITCH':11} {'VERDICT':7} {'CHECK':12} {'SECS':>6}  EVIDENCE",
    ]
    for r in report["results"]:
        ev = r["evidence"]
        mark = "*" if r["switch"] == r["designed_switch"] else " "
        issues = " | ".join(ev.get("issues", [])) or "no loss, no duplicates, guest MACs intact"
        lines.append(
            f"{r['mode']:<4} {r['mode_name']:13} {r['switch'] + mark:11} {r['verdict']:7} "
            f"{ev.get('check', {}).get('verdict', '-'):12} "
            f"{ev['timings'].get('total_s', '-'):>6}  {issues[:160]}"
        )
    lines.append("(* = the switch setup the mode is designed for)")
    return "\n".join(lines) + "\n"
