#!/usr/bin/python3
"""Benchmark: fence_kvmha + kvmha-fence-listener against fence_xvm/fence_virt + fence_virtd.

Same domain (``guest9``, unmanaged, on host1 of a 3-host lab), alternating A B A B in
one run. fence_virtd runs on host1 with the libvirt backend and its TCP listener on the
lab network (10.77.0.11:1229); every client runs in host2's network namespace, so both
go over the lab network to a daemon on the domain's host. Measured:

* frozen: request -> the guest's vCPUs stopped (libvirt reports it paused or off; a
  watcher polls host1's libvirt every 2 ms). fence_kvmha pauses before it destroys;
  fence_xvm does not: the ratio compares with fence_xvm's time until its guest stops
  executing, its QEMU process gone from the process table (a second watcher polls
  /proc/PID/stat every 2 ms; libvirt's "not running" may lag the real stop).
* QEMU gone: request -> the QEMU process has exited, for both.
* off: request -> the client returns having confirmed off (libvirt reports shut off).
* status_concurrent: 50 concurrent ``status`` requests to one listener, p50 and p99.
* flood: frozen and confirmed off again, while host3 floods the daemon's port with
  unauthenticated connections (fence_kvmha: hellos under unknown key names; fence_virtd:
  random bytes), 32 connections in flight all the time; each side floods its own daemon.
* power_loss: host1 (which runs the domain) loses power; a client on host3 asks host2's
  listener to power the domain off, retrying every second as a fencer would, until it
  answers success. By the rule (docs/fence.md) success waits for the host cluster's fence
  of host1: the figure is from the power cut to success, and how much of it came after
  that fence completed. fence_xvm has no such path (its daemon died with host1): it is
  asked once, with a 30 s limit, and its result recorded.

    bench/fence.py [--rounds 10] [--power-rounds 3] [--json FILE] [--labdir DIR] [--keep]

Needs the Debian packages fence-virt and fence-virtd. Never kills QEMU behind libvirt's
back: both sides destroy through libvirt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import libvirt

from kvmha.fence import agent
from kvmha.fence.keys import Scope, write_private
from kvmha.tools.lab import libvirtconf, power
from kvmha.tools.lab.lab import Lab

DOMAIN = "guest9"
XVM_PORT = 1229
KEY = "bench"
CONCURRENT = 50


def nsenter_net(lab: Lab, host: str) -> list[str]:
    pid = power.init_pid(lab.cfg, host)
    assert pid is not None
    return ["nsenter", "-t", str(pid), "-n", "--"]


class Bench:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.cfg = lab.cfg
        self.dir = self.cfg.labdir / "bench-fence"
        self.dir.mkdir(exist_ok=True)
        self.conn = libvirt.open(self.cfg.libvirt_uri("host1"))
        self.xml = libvirtconf.guest_domain_xml(
            self.cfg,
            DOMAIN,
            str(self.cfg.image_dir / "vmlinuz"),
            str(self.cfg.image_dir / "initrd.img"),
        )
        self.virtd: subprocess.Popen[bytes] | None = None

    # ---- set-up ----------------------------------------------------------------
    def setup(self) -> None:
        deadline = time.monotonic() + 60
        for h in self.cfg.host_names():  # every host's listener and libvirt serve
            while not self._serving(h):
                if time.monotonic() > deadline:
                    raise SystemExit(f"the fence listener or libvirt on {h} does not answer")
                time.sleep(0.5)
        secret = os.urandom(32)
        for h in self.cfg.host_names():
            keys = self.cfg.host_dir(h) / "etc/kvmha/fence/keys"
            write_private(
                keys / f"{KEY}.key",
                agent.key_text(KEY, secret, Scope("domains", (DOMAIN,)).as_fields()),
            )
        write_private(self.dir / "kvmha.key", agent.key_text(KEY, secret))
        xvm_key = self.dir / "fence_xvm.key"
        write_private(xvm_key, os.urandom(512).hex())
        conf = self.dir / "fence_virt.conf"
        conf.write_text(
            'fence_virtd { listener = "tcp"; backend = "libvirt"; '
            'module_path = "/usr/lib/x86_64-linux-gnu/fence-virt"; }\n'
            f'listeners {{ tcp {{ key_file = "{xvm_key}"; address = "10.77.0.11"; '
            f'family = "ipv4"; port = "{XVM_PORT}"; }} }}\n'
            'backends { libvirt { uri = "qemu:///system"; } }\n'
        )
        self.conf = conf
        self.start_virtd()

    def start_virtd(self) -> None:
        conf = self.conf
        pid = power.init_pid(self.cfg, "host1")
        # fence_virtd in host1's mount and network namespaces (it needs host1's libvirt)
        self.virtd = subprocess.Popen(
            [
                "nsenter",
                "-t",
                str(pid),
                "-m",
                "-u",
                "-n",
                "--",
                "/usr/sbin/fence_virtd",
                "-F",
                "-f",
                str(conf),
                "-p",
                str(self.dir / "fence_virtd.pid"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "fence_virtd.log", "ab"),  # noqa: SIM115
        )
        self.start_domain()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.run_client("xvm", "status")[0] == 0:
                break
            time.sleep(0.5)
        else:
            raise SystemExit("fence_virtd does not answer")

    def _serving(self, host: str) -> bool:
        if ":1230 " not in self.lab.run_in(host, ["ss", "-ltn"]).stdout:
            return False
        try:
            libvirt.open(self.cfg.libvirt_uri(host)).close()
        except libvirt.libvirtError:
            return False
        return True

    def teardown_virtd(self) -> None:
        """fence_virtd down while host1 loses power (it would die with it anyway)."""
        if self.virtd is not None:
            self.virtd.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.virtd.wait(5)
            if self.virtd.poll() is None:
                self.virtd.kill()
                self.virtd.wait(5)
            self.virtd = None

    def reconnect(self) -> None:
        """A new connection to host1's libvirt (after host1 was power-cycled)."""
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()
        deadline = time.monotonic() + 60
        while not all(self._serving(h) for h in self.cfg.host_names()):
            if time.monotonic() > deadline:
                raise SystemExit("the hosts' listeners and libvirt do not answer after a restore")
            time.sleep(0.5)
        self.conn = libvirt.open(self.cfg.libvirt_uri("host1"))

    def teardown(self) -> None:
        if self.virtd is not None:
            self.virtd.terminate()
            try:
                self.virtd.wait(5)
            except subprocess.TimeoutExpired:
                self.virtd.kill()
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.lookupByName(DOMAIN).destroy()

    def start_domain(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.conn.lookupByName(DOMAIN)
                return
            except libvirt.libvirtError:
                pass
            try:
                self.conn.createXML(self.xml, 0)
                time.sleep(1.0)  # let QEMU settle, as a running guest would be
                return
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    # ---- clients ------------------------------------------------------------------
    def client_argv(
        self, which: str, action: str, client: str = "host2", address: str = "10.77.0.11"
    ) -> list[str]:
        if which == "kvmha":
            return [
                *nsenter_net(self.lab, client),
                "/usr/sbin/fence_kvmha",
                "-o",
                action,
                "-n",
                DOMAIN,
                "-a",
                address,
                "-k",
                str(self.dir / "kvmha.key"),
            ]
        return [
            *nsenter_net(self.lab, "host2"),
            "timeout",
            "30",
            "/usr/sbin/fence_virt",
            "-T",
            "10.77.0.11",
            "-p",
            str(XVM_PORT),
            "-k",
            str(self.dir / "fence_xvm.key"),
            "-o",
            action,
            "-n",
            DOMAIN,
            "-t",
            "20",
        ]

    def run_client(self, which: str, action: str) -> tuple[int, float]:
        t0 = time.monotonic()
        r = subprocess.run(
            self.client_argv(which, action), capture_output=True, check=False, timeout=60
        )
        return r.returncode, time.monotonic() - t0

    def qemu_pid(self) -> int:
        """The domain's QEMU process as this machine's process table has it."""
        tag = f"guest={DOMAIN},".encode()
        for p in power.netns_pids(self.cfg.host_netns("host1")):
            try:
                argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"qemu-system-x86_64") and tag in b" ".join(argv):
                return p
        raise SystemExit(f"no QEMU process of {DOMAIN} on host1")

    def fence_once(self, which: str) -> tuple[float, float, float]:
        """(s to frozen, s to confirmed off, s to QEMU gone) for one off of the running
        domain. Frozen: libvirt reports it not running. QEMU gone: its process has exited
        (a zombie or no entry in the process table), whatever libvirt's bookkeeping says."""
        dom = self.conn.lookupByName(DOMAIN)
        pid = self.qemu_pid()
        frozen: list[float] = []
        gone: list[float] = []
        stop = threading.Event()
        watch = libvirt.open(self.cfg.libvirt_uri("host1"))
        t0 = time.monotonic()

        def process_watcher() -> None:
            stat = Path(f"/proc/{pid}/stat")
            while not stop.is_set():
                try:
                    state = stat.read_text().rsplit(")", 1)[1].split()[0]
                except (OSError, IndexError):
                    state = "X"
                if state in ("Z", "X"):
                    gone.append(time.monotonic() - t0)
                    return
                time.sleep(0.002)

        def watcher() -> None:
            d = watch.lookupByUUIDString(dom.UUIDString())
            while not stop.is_set():
                try:
                    st = d.state()[0]
                except libvirt.libvirtError:
                    st = libvirt.VIR_DOMAIN_SHUTOFF
                if st != libvirt.VIR_DOMAIN_RUNNING:
                    frozen.append(time.monotonic() - t0)
                    return
                time.sleep(0.002)

        th = threading.Thread(target=watcher)
        tp = threading.Thread(target=process_watcher)
        th.start()
        tp.start()
        t0 = time.monotonic()
        rc, took = self.run_client(which, "off")
        deadline = time.monotonic() + 5  # the process may exit just after the answer
        while not gone and time.monotonic() < deadline:
            time.sleep(0.002)
        stop.set()
        th.join(5)
        tp.join(5)
        watch.close()
        if rc != 0:
            raise SystemExit(f"{which} off failed (rc {rc})")
        if not gone:
            raise SystemExit(f"{which} off answered, but QEMU pid {pid} still runs")
        with contextlib.suppress(libvirt.libvirtError):  # transient and gone: off
            assert not self.conn.lookupByName(DOMAIN).isActive()
        return (frozen[0] if frozen else took), took, gone[0]

    def concurrent_status(self, rounds: int = 3) -> list[float]:
        script = (
            "import json,sys,threading,time\n"
            "from kvmha.fence import agent\n"
            f"k=agent.Key.load({str(self.dir / 'kvmha.key')!r})\n"
            f"n={CONCURRENT}; out=[]; b=threading.Barrier(n)\n"
            "def one():\n"
            "    b.wait(); t=time.monotonic()\n"
            f"    a=agent.exchange('10.77.0.11',{agent.DEFAULT_PORT},k,"
            f"{{'action':'status','plug':{DOMAIN!r}}},5,10)\n"
            "    assert a['state']=='on', a\n"
            "    out.append(time.monotonic()-t)\n"
            "ts=[threading.Thread(target=one) for _ in range(n)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print(json.dumps(out))\n"
        )
        lat: list[float] = []
        for _ in range(rounds):
            r = subprocess.run(
                [*nsenter_net(self.lab, "host2"), sys.executable, "-I", "-c", script],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            lat += json.loads(r.stdout)
        return lat


class Flood:
    """Unauthenticated connections to one daemon from host3, n at a time, until stopped."""

    def __init__(self, lab: Lab, port: int, kind: str, n: int = 32) -> None:
        self.proc = subprocess.Popen(
            [
                *nsenter_net(lab, "host3"),
                sys.executable,
                "-I",
                "-m",
                "kvmha.tools.lab.flood",
                "10.77.0.11",
                str(port),
                {"kvmha": "hello", "xvm": "bytes"}[kind],
                str(n),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(2.0)  # in full flow before the first measurement

    def stop(self) -> None:
        os.killpg(self.proc.pid, 9)
        self.proc.wait(10)


def power_loss_once(bench: Bench, lab: Lab) -> dict[str, Any]:
    """Cut host1's power under the running domain; retry an off through host2's listener
    once a second until success. Seconds from the cut to success, and to the host
    cluster's completed fence of host1 (from its fence history)."""
    from kvmha.tools.lab import faults

    bench.start_domain()
    # a listener other than host1's has seen the domain run there (a guest cluster's
    # member runs long enough for the listeners' surveys to record it; a domain no record
    # shows and no host has is refused as unknown, which this bench must not measure)
    status = bench.client_argv("kvmha", "status", client="host3", address="10.77.0.12")
    if subprocess.run(status, capture_output=True, check=False, timeout=60).returncode != 0:
        raise SystemExit("the domain is not seen through host2's listener before the cut")
    argv = bench.client_argv("kvmha", "off", client="host3", address="10.77.0.12")
    t_cut = time.time()
    t0 = time.monotonic()
    lab.power_cut("host1")
    attempts = 0
    while True:
        attempts += 1
        r = subprocess.run(argv, capture_output=True, check=False, timeout=90)
        if r.returncode == 0:
            took = time.monotonic() - t0
            break
        if time.monotonic() - t0 > 240:
            raise SystemExit("no successful off within 240 s of the power cut")
        time.sleep(1.0)
    st = lab.cluster_state(prefer="host2")
    fenced = st.last_fenced("host1") if st is not None else None
    after_fence = None
    if fenced is not None:
        after_fence = round(t_cut + took - fenced, 3)
    faults.restore(lab)
    bench.reconnect()
    return {
        "cut_to_success_s": round(took, 3),
        "success_after_host_fence_s": after_fence,
        "attempts": attempts,
    }


def xvm_after_power_loss(bench: Bench, lab: Lab) -> dict[str, Any]:
    from kvmha.tools.lab import faults

    bench.start_virtd()
    bench.start_domain()
    if bench.run_client("xvm", "status")[0] != 0:
        raise SystemExit("fence_virtd does not see the domain before the power cut")
    bench.teardown_virtd()  # it runs on host1: it goes with the power (first: the lab's
    lab.power_cut("host1")  # switch refuses to call a host off while it has processes)
    t0 = time.monotonic()
    rc, _took = bench.run_client("xvm", "off")
    took = time.monotonic() - t0
    faults.restore(lab)
    bench.reconnect()
    return {"rc": rc, "s": round(took, 3), "succeeded": rc == 0}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--power-rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--labdir", type=Path, default=Path("/var/lib/kvmha-bench-fence"))
    ap.add_argument("--keep", action="store_true", help="leave the lab up")
    args = ap.parse_args()
    for tool in ("/usr/sbin/fence_virtd", "/usr/sbin/fence_virt", "/usr/sbin/fence_kvmha"):
        if not os.access(tool, os.X_OK):
            raise SystemExit(
                f"{tool} is missing (apt-get install fence-virt fence-virtd; " "scripts/setup.sh)"
            )
    libvirt.registerErrorHandler(lambda _c, _e: None, None)  # lookups of gone domains
    lab = Lab(args.labdir, lambda m: print(f"[lab] {m}", file=sys.stderr))
    created = not lab.is_configured()
    lab.up(3, 0)
    bench = Bench(lab)
    try:
        bench.setup()
        res: dict[str, list[tuple[float, float, float]]] = {"kvmha": [], "xvm": []}
        for i in range(args.rounds + 1):  # round 0 warms up both
            for which in ("kvmha", "xvm"):
                bench.start_domain()
                r = bench.fence_once(which)
                if i:
                    res[which].append(r)
        bench.start_domain()
        lat = bench.concurrent_status()
        if len(lat) != 3 * CONCURRENT:
            raise SystemExit(f"only {len(lat)} of {3 * CONCURRENT} status requests answered")
        flooded: dict[str, list[tuple[float, float, float]]] = {"kvmha": [], "xvm": []}
        for which, port in (("kvmha", agent.DEFAULT_PORT), ("xvm", XVM_PORT)):
            flood = Flood(lab, port, which)
            try:
                for _ in range(max(3, args.rounds // 2)):
                    bench.start_domain()
                    flooded[which].append(bench.fence_once(which))
            finally:
                flood.stop()
        bench.teardown_virtd()
        power = [power_loss_once(bench, lab) for _ in range(args.power_rounds)]
        xvm_power = xvm_after_power_loss(bench, lab)
    finally:
        bench.teardown()
        if created and not args.keep:
            lab.down()
    k_frozen = statistics.median(x[0] for x in res["kvmha"])
    k_off = statistics.median(x[1] for x in res["kvmha"])
    x_off = statistics.median(x[1] for x in res["xvm"])
    x_frozen = statistics.median(x[0] for x in res["xvm"])
    x_gone = statistics.median(x[2] for x in res["xvm"])
    k_gone = statistics.median(x[2] for x in res["kvmha"])
    fx_gone = statistics.median(x[2] for x in flooded["xvm"])
    fk_frozen = statistics.median(x[0] for x in flooded["kvmha"])
    fk_off = statistics.median(x[1] for x in flooded["kvmha"])
    fx_off = statistics.median(x[1] for x in flooded["xvm"])
    p_success = statistics.median(x["cut_to_success_s"] for x in power)
    out: dict[str, Any] = {
        "flood": {
            "kvmha_frozen_s": round(fk_frozen, 4),
            "kvmha_off_s": round(fk_off, 4),
            "fence_xvm_off_s": round(fx_off, 4),
            "fence_xvm_qemu_gone_s": round(fx_gone, 4),
            "frozen_ratio": round(fk_frozen / fx_gone, 3),
            "off_ratio": round(fk_off / fx_off, 3),
            "samples": {k: [[round(x, 4) for x in t] for t in v] for k, v in flooded.items()},
        },
        "power_loss": {
            "kvmha_cut_to_success_s": round(p_success, 3),
            "rounds": power,
            "fence_xvm": xvm_power,
        },
        "frozen": {
            # like for like (#18): fence_xvm's guest stops executing when its QEMU exits
            "kvmha_s": round(k_frozen, 4),
            "fence_xvm_qemu_gone_s": round(x_gone, 4),
            "fence_xvm_off_s": round(x_off, 4),
            "ratio": round(k_frozen / x_gone, 3),
            "ratio_to_fence_xvm_off": round(k_frozen / x_off, 3),
        },
        "qemu_gone": {
            "kvmha_s": round(k_gone, 4),
            "fence_xvm_s": round(x_gone, 4),
            "ratio": round(k_gone / x_gone, 3),
        },
        "off": {
            "kvmha_s": round(k_off, 4),
            "fence_xvm_s": round(x_off, 4),
            "ratio": round(k_off / x_off, 3),
        },
        "status_concurrent": {
            "p50_s": round(pct(lat, 50), 4),
            "p99_s": round(pct(lat, 99), 4),
            "n": len(lat),
            "concurrency": CONCURRENT,
        },
        "rounds": args.rounds,
        "fence_xvm_first_not_running_s": round(x_frozen, 4),
        "samples": {k: [[round(x, 4) for x in t] for t in v] for k, v in res.items()},
    }
    print("| what | fence_kvmha | fence_xvm (fence_virt tcp) | ratio | goal |")
    print("|---|---|---|---|---|")
    print(
        f"| request -> frozen | {k_frozen * 1000:.0f} ms | (QEMU gone) {x_gone * 1000:.0f} ms | "
        f"{out['frozen']['ratio']} | <= 0.5 |"
    )
    print(
        f"| request -> QEMU process gone | {k_gone * 1000:.0f} ms | {x_gone * 1000:.0f} ms | "
        f"{out['qemu_gone']['ratio']} | |"
    )
    print(
        f"| request -> confirmed off | {k_off * 1000:.0f} ms | {x_off * 1000:.0f} ms | "
        f"{out['off']['ratio']} | <= 1.25 |"
    )
    print(
        f"| {CONCURRENT} concurrent status | p50 {pct(lat, 50) * 1000:.0f} ms, "
        f"p99 {pct(lat, 99) * 1000:.0f} ms | | | p99 < 200 ms |"
    )
    print(
        f"| during a flood: request -> frozen | {fk_frozen * 1000:.0f} ms | (QEMU gone) "
        f"{fx_gone * 1000:.0f} ms | {out['flood']['frozen_ratio']} | <= 0.5 |"
    )
    print(
        f"| during a flood: request -> confirmed off | {fk_off * 1000:.0f} ms | "
        f"{fx_off * 1000:.0f} ms | {out['flood']['off_ratio']} | <= 1.25 |"
    )
    after = [x["success_after_host_fence_s"] for x in power]
    xvm_text = (
        f"{xvm_power['s']:.1f} s, ok"
        if xvm_power["succeeded"]
        else f"never: rc {xvm_power['rc']} after {xvm_power['s']:.1f} s "
        "(its daemon died with host1)"
    )
    print(
        f"| host lost power: cut -> off confirmed | {p_success:.1f} s (median of "
        f"{len(power)}; after the host fence: {after} s) | {xvm_text} | | succeeds, after "
        "the host fence |"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
