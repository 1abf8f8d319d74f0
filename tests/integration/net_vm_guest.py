"""Runs inside the booted Debian kernel (see test_net_vm.py), as a script of its own under
the machine's /usr/bin/python3 with the installed kvmha: the repository itself may lie
where the booted system mounts a fresh file system (/tmp, /var/tmp), and pytest is not
installed for that interpreter. It builds every bond mode 0-6 under a bridge, bond -> VLAN
-> bridge, a VLAN-filtering bridge and the monitoring/slave cases, runs check on each,
then probes the seven modes against the switch each is designed for, and writes it all to
vm.json in the directory it is given.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

NS = "kn-vchk"
NS_PEER = "kn-vchk-peer"


# ---------------------------------------------------------------------------
# guest side (runs as a script inside the booted kernel)
# ---------------------------------------------------------------------------
def _idx(r: Any, name: str) -> int:
    return int(r.link_lookup(ifname=name)[0])


def build_bond_bridge(mode: int, *, nslaves: int = 2, vlan: int | None = None,
                      vlan_filtering: bool = False, **bond: Any) -> None:  # fmt: skip
    """bond0 (mode, slaves e0..) under br0, directly or through bond0.VLAN; a guest port."""
    from kvmha.netcfg import nsutil

    for ns in (NS, NS_PEER):
        nsutil.remove(ns)
        nsutil.create(ns)
    r = nsutil.iproute(NS)
    try:
        attrs: dict[str, Any] = {"bond_mode": mode, "bond_miimon": 100}
        if mode == 4:
            attrs["bond_ad_lacp_rate"] = 1
        attrs.update(bond)
        r.link("add", ifname="bond0", kind="bond", **attrs)
        b = _idx(r, "bond0")
        for i in range(nslaves):
            r.link("add", ifname=f"e{i}", kind="veth", peer={"ifname": f"e{i}p"})
            r.link("set", index=_idx(r, f"e{i}p"), net_ns_fd=NS_PEER)
            r.link("set", index=_idx(r, f"e{i}"), master=b)
        br_attrs: dict[str, Any] = {"br_stp_state": 0, "br_forward_delay": 0}
        if vlan_filtering:
            br_attrs["br_vlan_filtering"] = 1
        r.link("add", ifname="br0", kind="bridge", **br_attrs)
        br = _idx(r, "br0")
        port = "bond0"
        if vlan is not None:
            port = f"bond0.{vlan}"
            r.link("add", ifname=port, kind="vlan", link=b, vlan_id=vlan)
        r.link("set", index=_idx(r, port), master=br)
        r.link("add", ifname="vm0", kind="veth", peer={"ifname": "vm0p"})
        r.link("set", index=_idx(r, "vm0"), master=br)
        for n in [*(f"e{i}" for i in range(nslaves)), "bond0", port, "br0", "vm0", "vm0p"]:
            r.link("set", index=_idx(r, n), state="up")
    finally:
        r.close()
    p = nsutil.iproute(NS_PEER)
    try:
        for i in range(nslaves):
            p.link("set", index=_idx(p, f"e{i}p"), state="up")
    finally:
        p.close()


SCENARIOS: dict[str, dict[str, Any]] = {
    **{f"mode{m}": {"mode": m} for m in range(7)},
    "vlan-mode1": {"mode": 1, "vlan": 100},
    "vlan-mode6": {"mode": 6, "vlan": 100},
    "vlan-filtering-mode1": {"mode": 1, "vlan_filtering": True},
    "arp-monitor": {
        "mode": 1,
        "bond_miimon": 0,
        "bond_arp_interval": 200,
        "bond_arp_ip_target": ["10.0.0.254"],
    },  # fmt: skip
    "no-monitor": {"mode": 1, "bond_miimon": 0},
    "single-slave": {"mode": 1, "nslaves": 1},
}


def interrupt_probe() -> dict[str, Any]:
    """Ctrl-C (SIGINT) and SIGTERM in the middle of a probe: nothing may remain."""
    import signal
    import subprocess

    from kvmha.netcfg import nsutil

    out: dict[str, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        argv = [sys.executable, "-m", "kvmha.netcfg.guest", "probe", "--modes", "1",
                "--out", "/tmp/interrupted.json"]  # fmt: skip
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
        prefix = f"kn-p{p.pid}-"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(n.startswith(prefix) for n in nsutil.listnetns()):
                break
            time.sleep(0.05)
        seen = [n for n in nsutil.listnetns() if n.startswith(prefix)]
        time.sleep(1.0)
        p.send_signal(sig)
        rc = p.wait(60)
        left = [n for n in nsutil.listnetns() if n.startswith(prefix)]
        out[sig.name] = {"seen": len(seen), "rc": rc, "left": left}
    return out


def guest_main(out: Path) -> int:
    from kvmha.netcfg import nsutil, probe
    from kvmha.netcfg.check import check

    def say(msg: str) -> None:
        print(f"kvmha-net: {msg}", flush=True)

    probe.ensure_drivers(Path(os.environ["KVMHA_NET_MODULES"]))
    result: dict[str, Any] = {"kernel": os.uname().release, "check": {}, "errors": {}}
    for name, spec in SCENARIOS.items():
        spec = dict(spec)
        try:
            build_bond_bridge(spec.pop("mode"), **spec)
            time.sleep(0.5 if "mode4" not in name else 4.0)  # miimon; LACP fallback
            result["check"][name] = check(NS)
            say(f"check {name}: {result['check'][name]['bridges'][0]['verdict']}")
        except Exception as exc:  # recorded, the host side fails the test
            result["errors"][name] = repr(exc)
            say(f"check {name}: ERROR {exc!r}")
        finally:
            for ns in (NS, NS_PEER):
                nsutil.remove(ns)
    result["interrupt"] = interrupt_probe()
    say(f"probe interrupted: {result['interrupt']}")
    result["probe"] = probe.run(list(range(7)), None, progress=say)
    result["namespaces_left"] = [n for n in nsutil.listnetns() if n.startswith("kn")]
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(guest_main(Path(sys.argv[1]) / "vm.json"))
