"""A real guest cluster: Pacemaker inside three Debian guests, fencing through kvmha.

Three hosts, three real Debian 12 guests (``--guest-image debian --guest-cluster``), each
a member of a guest cluster whose stonith device is fence_kvmha against the hosts'
listeners, reached over the guests' own virtual NICs. The service is nginx with a
floating address (group ``web``). Everything inside the guests is reached through the
QEMU guest agent. A watcher asks every member every second whether nginx is active, and
every test ends by asserting it never was on two members at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmha.tools.lab import power
from kvmha.tools.lab.guestexec import GuestExecError, running_on
from kvmha.tools.lab.lab import Lab
from kvmha.tools.lab.realcluster import DEVICE_ID, SERVICE_ID, RealGuestCluster

from .helpers import wait_for

pytestmark = pytest.mark.lab
TEST_LABS = Path(os.environ.get("KVMHA_TEST_LABS", "/var/lib/kvmha-test"))
Setup = tuple[Lab, RealGuestCluster]


def _progress(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


@pytest.fixture(scope="module")
def real_lab() -> Iterator[Setup]:
    labdir = TEST_LABS / "realgc"
    Lab(labdir, _progress).down(purge=True)
    lab = Lab(labdir, _progress)
    try:
        lab.up(3, 3, "Guest", 1000, guest_image="debian", guest_cluster=True)
        yield lab, RealGuestCluster(lab)
    finally:
        Lab(labdir, _progress).down()


class ServiceWatch:
    """Every second, through the guests: is nginx active on each member? One thread per
    member, so a hung member (whose guest agent does not answer) delays only itself."""

    def __init__(self, gc: RealGuestCluster) -> None:
        self.gc = gc
        self.samples: list[tuple[float, str, bool | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in gc.nodes
        ]

    def __enter__(self) -> ServiceWatch:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self, node: str) -> None:
        while not self._stop.is_set():
            t = time.time()
            active = self.gc.nginx_active(node)
            with self._lock:
                self.samples.append((t, node, active))
            self._stop.wait(max(0.0, 1.0 - (time.time() - t)))

    def active_since(self, node: str, t: float) -> float | None:
        """First time after t at which nginx was seen active on node."""
        for ts, n, active in sorted(self.samples):
            if ts >= t and n == node and active:
                return ts
        return None

    def check(self) -> None:
        """Two members seen active within one second of each other = a double run."""
        assert len(self.samples) >= 10, "the watcher took too few samples"
        on = sorted((t, n) for t, n, active in self.samples if active)
        doubles = [
            (a, b)
            for i, a in enumerate(on)
            for b in on[i + 1 :]
            if b[0] - a[0] < 1.0 and b[1] != a[1]
        ]
        assert not doubles, f"nginx active on two members at once: {doubles[:3]}"
        answered = {n for _, n, active in self.samples if active is not None}
        assert answered, "no member ever answered the watcher"


def audit(lab: Lab, since: float = 0.0) -> list[dict[str, Any]]:
    """Every listener's audit records (one file per host), in time order, from since on
    (the records' time has a resolution of one second)."""
    out = []
    for h in lab.cfg.host_names():
        f = lab.cfg.host_dir(h) / "var/log/kvmha/fence-audit.log"
        if f.exists():
            out += [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    for e in out:
        e["t"] = audit_time(e)
    return sorted((e for e in out if e["t"] >= int(since)), key=lambda e: e["t"])


def audit_time(e: dict[str, Any]) -> float:
    import calendar

    return float(calendar.timegm(time.strptime(e["time"][:19], "%Y-%m-%dT%H:%M:%S")))


def instances(lab: Lab, guest: str) -> list[tuple[str, int]]:
    """(host, QEMU PID as the machine sees it) of every running copy of guest."""
    found = []
    for h in running_on(lab.cfg, guest):
        found += [(h, p) for p in qemu_pids(lab, h, guest)]
    return found


def qemu_pids(lab: Lab, host: str, guest: str) -> list[int]:
    pids = []
    for p in power.netns_pids(lab.cfg.host_netns(host)):
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"qemu-system-x86_64")
            and f"guest={guest},".encode() in b" ".join(argv)
        ):
            pids.append(p)
    return pids


def settle(lab: Lab, gc: RealGuestCluster) -> None:
    """Every host on, every guest running once, the guest cluster complete and serving."""
    for h in lab.cfg.host_names():
        if not lab.powered(h):
            lab.power_on(h)
    wait_for(
        "every host online",
        lambda: (st := lab.cluster_state()) is not None and len(st.online_nodes()) == 3,
        180,
    )
    for g in lab.cfg.guest_names():
        lab.run_in("host1", ["crm_resource", "--cleanup", "-r", g], check=False)
    wait_for(
        "every guest running once",
        lambda: all(len(running_on(lab.cfg, g)) == 1 for g in lab.cfg.guest_names()),
        300,
        1.0,
    )
    # and the host cluster idle: a guest still in its start (the health gate waits for
    # the guest agent) is not yet what a fault test may hit
    lab.run_in("host1", ["crm_resource", "--wait", "--timeout", "300"], timeout=320, check=False)
    wait_for("the guest cluster complete", gc.all_online, 600, 3.0)
    for n in gc.nodes:
        try:
            gc.exec(n, ["crm_resource", "--cleanup"], timeout=60)
            break
        except GuestExecError:
            continue
    wait_for(
        "fencing and nginx started in the guest cluster",
        lambda: (st := gc.state()) is not None
        and st.running_on(DEVICE_ID) is not None
        and st.running_on(SERVICE_ID) is not None,
        300,
        3.0,
    )


@pytest.fixture
def real(real_lab: Setup) -> Setup:
    settle(*real_lab)
    return real_lab


def test_guest_cluster_is_real_and_each_guest_has_its_own_identity(real: Setup) -> None:
    lab, gc = real
    st = gc.state()
    assert st is not None and st.quorate
    assert st.online_nodes() == ["guest1", "guest2", "guest3"]
    ids = set()
    for n in gc.nodes:
        rc, out, _ = gc.exec(n, ["cat", "/etc/machine-id", "/proc/sys/kernel/hostname"])
        assert rc == 0
        mid, hostname = out.split()
        assert hostname == n
        ids.add(mid)
        rc, out, _ = gc.exec(n, ["corosync-cfgtool", "-s"])
        assert rc == 0 and f"nodeid: {n[5:]}" in out.replace("Local node ID ", "nodeid: "), out
        rc, out, _ = gc.exec(n, ["ip", "-4", "-o", "addr", "show", "eth0"])
        assert lab.cfg.guest_address(n) in out
        # its own writable disk: an overlay on the shared, read-only base
        disk = lab.cfg.guest_disk(n)
        assert disk.exists() and "base.img" in os.popen(f"qemu-img info -U {disk}").read()
    assert len(ids) == 3
    # the members run on different hosts
    assert len({running_on(lab.cfg, n)[0] for n in gc.nodes}) == 3
    # the service answers on its floating address, from another member
    holder = gc.service_node()
    other = next(n for n in gc.nodes if n != holder)
    rc, out, err = gc.exec(
        other,
        [
            "python3",
            "-c",
            "import urllib.request, sys; "
            "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
            f"http://{lab.cfg.gc_vip}/health",
        ],
    )
    assert rc == 0 and out.strip() == "ok", err


def test_stonith_admin_reboot_inside_a_guest_fences_through_kvmha(real: Setup) -> None:
    lab, gc = real
    holder = gc.service_node()
    victim = next(n for n in gc.nodes if n != holder)
    via = next(n for n in gc.nodes if n not in (victim,))
    before = instances(lab, victim)
    assert len(before) == 1
    t0 = time.time()
    with ServiceWatch(gc) as watch:
        rc, out, err = gc.exec(
            via, ["stonith_admin", "--reboot", victim, "--timeout", "150"], timeout=180
        )
        assert rc == 0, out + err
        # the old QEMU is gone: kvmha powered it off (not a guest-side reboot)
        assert before[0] not in instances(lab, victim)
        ev = [e for e in audit(lab, t0) if e.get("action") == "reboot" and e.get("plug") == victim]
        assert ev and ev[-1]["result"] == "off" and ev[-1]["key"] == "gcluster"
        # the request came from a guest, over its virtual NIC
        assert ev[-1]["peer"].split(":")[0] in {lab.cfg.guest_address(n) for n in gc.nodes}
        wait_for(f"{victim} running again", lambda: len(instances(lab, victim)) == 1, 300, 1.0)
        wait_for(
            f"{victim} rejoined the guest cluster",
            lambda: (st := gc.state(prefer=via)) is not None
            and victim in st.online_nodes()
            and len(st.online_nodes()) == 3,
            600,
            3.0,
        )
    watch.check()


@pytest.mark.heavy
def test_hung_member_is_fenced_through_kvmha_and_its_service_moves(real: Setup) -> None:
    lab, gc = real
    victim = gc.service_node()
    assert victim is not None
    ((host, pid),) = instances(lab, victim)
    other = next(n for n in gc.nodes if n != victim)
    with ServiceWatch(gc) as watch:
        t0 = time.time()
        os.kill(pid, signal.SIGSTOP)  # its QEMU hangs: vCPU, NIC, guest agent, all
        try:
            moved = wait_for(
                "nginx active on another member",
                lambda: (n := gc.service_node(prefer=other)) not in (None, victim) and n,
                150,
                2.0,
            )
        finally:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGCONT)  # if nothing fenced it, let it go on
        ev = [
            e
            for e in audit(lab, t0)
            if e.get("plug") == victim and e.get("action") in ("reboot", "off")
        ]
        assert ev and ev[-1]["result"] == "off", ev
        # the hung copy is gone (killed while stopped), the service runs elsewhere
        assert (host, pid) not in instances(lab, victim)
        started = watch.active_since(moved, t0)
        assert started is not None
        wait_for(
            f"{victim} back in the guest cluster",
            lambda: (st := gc.state(prefer=moved)) is not None and len(st.online_nodes()) == 3,
            600,
            3.0,
        )
    watch.check()


@pytest.mark.heavy
def test_power_cut_of_a_members_host_host_fence_first_then_guest_fence(real: Setup) -> None:
    lab, gc = real
    victim = gc.service_node()
    assert victim is not None
    ((host, _pid),) = instances(lab, victim)
    other = next(n for n in gc.nodes if n != victim)
    events_before = len(lab.power_events())
    t0 = time.time()
    with ServiceWatch(gc) as watch, powered_on_after(lab, host):
        lab.power_cut(host)
        moved = wait_for(
            "nginx active on another member",
            lambda: (n := gc.service_node(prefer=other)) not in (None, victim) and n,
            400,
            2.0,
        )
        fenced = [
            e
            for e in lab.power_events()[events_before:]
            if e["host"] == host and e["origin"] == "fence" and e["action"] == "off"
        ]
        assert fenced, "the host cluster did not fence the host"
        gfence = [e for e in audit(lab, t0) if e.get("plug") == victim and e.get("result") == "off"]
        assert gfence, "the guest cluster's fence did not succeed through kvmha"
        t_guest = gfence[0]["t"]
        # only after the host fence (the audit's time has a resolution of one second)
        assert t_guest >= int(fenced[0]["done"]), (gfence[0], fenced[0])
        assert watch.active_since(moved, fenced[0]["t"]) is not None
        # the member restarts on a surviving host and rejoins
        wait_for(
            f"{victim} running on another host",
            lambda: [h for h, _ in instances(lab, victim)] not in ([], [host]),
            400,
            2.0,
        )
        wait_for(
            f"{victim} rejoined",
            lambda: (st := gc.state(prefer=moved)) is not None and len(st.online_nodes()) == 3,
            600,
            3.0,
        )
    watch.check()


@contextlib.contextmanager
def powered_on_after(lab: Lab, host: str) -> Iterator[None]:
    try:
        yield
    finally:
        if not lab.powered(host):
            lab.power_on(host)


def test_disk_lease_refuses_a_second_start_on_another_host(real: Setup) -> None:
    """libvirt itself (virtlockd, lockspace on the shared storage) refuses to start a
    guest whose disk a QEMU on another host holds: the protection a double-start guard
    cannot give (its check and the create are not atomic)."""
    import libvirt

    lab, gc = real
    guest = next(n for n in gc.nodes if n != gc.service_node())
    ((host, pid),) = instances(lab, guest)
    other = next(h for h in lab.cfg.host_names() if h != host)
    xml = (lab.cfg.guests_dir / f"{guest}.xml").read_text()
    conn = libvirt.open(lab.cfg.libvirt_uri(other))
    try:
        with pytest.raises(libvirt.libvirtError) as exc:
            conn.createXML(xml, 0)
        assert "lock" in str(exc.value).lower(), exc.value
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByName(guest)  # nothing left behind on the other host
    finally:
        conn.close()
    # the first copy is untouched: same QEMU, still answering inside
    assert instances(lab, guest) == [(host, pid)]
    rc, out, _ = gc.exec(guest, ["cat", "/proc/sys/kernel/hostname"])
    assert rc == 0 and out.strip() == guest
    assert any(lab.cfg.lockspace_dir.iterdir())  # the leases live on the shared storage


def test_live_migration_of_the_member_serving_http(real: Setup) -> None:
    """The member that serves nginx live-migrates (kvmha guest migrate, i.e. a Pacemaker
    move); a client in another guest GETs the service address all along."""
    lab, gc = real
    holder = gc.service_node()
    assert holder is not None
    client = next(n for n in gc.nodes if n != holder)
    ((src, pid),) = instances(lab, holder)
    dst = next(h for h in lab.cfg.host_names() if h != src)
    script = (
        "import time, urllib.request, sys\n"
        "ok = err = 0\n"
        "end = time.time() + float(sys.argv[2])\n"
        "while time.time() < end:\n"
        "    try:\n"
        "        urllib.request.urlopen(sys.argv[1], timeout=5).read(); ok += 1\n"
        "    except Exception as e:\n"
        "        err += 1; print('error', repr(e), flush=True)\n"
        "    time.sleep(0.2)\n"
        "print('ok', ok, 'errors', err)\n"
    )
    result: dict[str, Any] = {}

    def poll() -> None:
        result["r"] = gc.exec(
            client,
            ["python3", "-c", script, f"http://{lab.cfg.gc_vip}/health", "90"],
            timeout=150,
        )

    t = threading.Thread(target=poll, daemon=True)
    with ServiceWatch(gc) as watch:
        t.start()
        time.sleep(10)
        r = lab.run_in(
            src if src != "host1" else dst,
            ["/usr/bin/python3", "-I", "-m", "kvmha.tools.cli", "guest", "migrate", holder, dst],
            timeout=330,
            check=False,
        )
        assert r.returncode == 0, r.stderr + r.stdout
        assert [h for h, _ in instances(lab, holder)] == [dst]
        t.join(200)
    watch.check()
    rc, out, err = result["r"]
    assert rc == 0, err
    print(f"client in {client} during the migration of {holder} {src} -> {dst}: {out.strip()}")
    last = out.strip().splitlines()[-1].split()
    ok, errors = int(last[1]), int(last[3])
    assert ok > 50
    # a live migration, not a restart: the guest cluster never lost the member
    st = gc.state(prefer=client)
    assert st is not None and holder in st.online_nodes()
    assert gc.service_node(st) == holder
    assert errors == 0, out
