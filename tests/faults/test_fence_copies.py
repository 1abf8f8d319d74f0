"""Fault suite: the cases of the rule for success (docs/fence.md) that need two hosts'
libvirt, a silent listener, a power cut or a flood, on the real 3-host fence lab.

* One domain (one UUID) on two hosts, paused on one as a migration source is, running on
  the other, whose listener is stopped (SIGSTOP): ``off`` is an error naming that host,
  and the paused copy the answering hosts reach is powered off. Once the host cluster has
  fenced that host (``kvmha lab power-cut``), the same ``off`` succeeds.
* One name, two UUIDs, on two hosts: ``off`` by name is refused as ambiguous, naming the
  hosts and UUIDs, and powers nothing off; ``off`` by UUID powers off that one only.
* Unauthenticated connections fill one listener's slots from many addresses while the
  guest cluster fences a guest that runs behind that listener: fencing through the other
  listeners, which ask the flooded one over the hosts' reserved slots, still succeeds;
  the refusals are in the audit log in aggregate, and no traceback anywhere.

The extra domains are not managed by the host cluster (no disk, nothing boots); the test
key's scope names only them.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest
from integration.helpers import powered_libvirts, wait_fenced, wait_for
from integration.test_fence_lab import (
    GUEST_KEY,
    Setup,
    audit,
    fence_and_check_rebooted,
    instances,
    settle,
)

from kvmha.process import clean_env, run
from kvmha.tools.lab import faults, libvirtconf
from kvmha.tools.lab.guestcluster import GuestCluster
from kvmha.tools.lab.lab import Lab

pytestmark = pytest.mark.lab
KEY = "/tmp/copies.key"
CLIENT = "guest1"  # the guest-cluster node the requests come from


@pytest.fixture()
def setup(fence_lab: Setup) -> Iterator[Setup]:
    settle(*fence_lab)
    yield fence_lab
    faults.restore(fence_lab[0])  # a host this test cut is back on and online


def copies(lab: Lab, name: str) -> dict[str, list[tuple[str, int]]]:
    """host -> [(UUID, libvirt state)] of every domain called name that libvirt has."""
    out: dict[str, list[tuple[str, int]]] = {}
    for h, conn in powered_libvirts(lab):
        for dom in conn.listAllDomains():
            if dom.name() == name:
                out.setdefault(h, []).append((dom.UUIDString(), dom.state()[0]))
    return out


@contextlib.contextmanager
def transient(lab: Lab, placed: list[tuple[str, str, str, bool]]) -> Iterator[None]:
    """Start (host, name, UUID, paused) domains; destroy whatever is left of them after."""
    try:
        for host, name, uid, paused in placed:
            conn = libvirt.open(lab.cfg.libvirt_uri(host))
            try:
                flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
                conn.createXML(libvirtconf.idle_domain_xml(name, uid), flags)
            finally:
                conn.close()
        yield
    finally:
        for host, _name, uid, _paused in placed:
            if not lab.powered(host):
                continue
            with contextlib.suppress(libvirt.libvirtError):
                conn = libvirt.open(lab.cfg.libvirt_uri(host))
                try:
                    conn.lookupByUUIDString(uid).destroy()
                finally:
                    conn.close()


def give_key(lab: Lab, gc: GuestCluster, name: str, domains: str) -> None:
    """A key whose scope is domains, created on host1 (the listeners all get it), copied
    into the client node as an admin would copy it into a guest."""
    lab.run_in(
        "host1",
        ["kvmha", "fence", "key", "create", name, "--domains", domains, "--out", KEY],
    )
    text = lab.run_in("host1", ["cat", KEY]).stdout
    run(gc._nsenter(CLIENT, ["sh", "-c", f"umask 077; cat > {KEY}"]), input=text, env=clean_env())


def fence(gc: GuestCluster, action: str, plug: str) -> subprocess.CompletedProcess[str]:
    argv = ["fence_kvmha", "-o", action, "-n", plug, "-k", KEY, "-a", gc.listener_addresses()]
    return gc.run_in(CLIENT, argv, timeout=120, check=False)


def test_a_copy_behind_a_silent_listener_fails_the_off_until_its_host_is_fenced(
    setup: Setup,
) -> None:
    lab, gc = setup
    name, uid = "copy1", str(uuid.uuid4())
    give_key(lab, gc, "copies1", name)
    # host2 has the paused source of a migration, host3 the running destination
    with transient(lab, [("host2", name, uid, True), ("host3", name, uid, False)]):
        assert copies(lab, name) == {
            "host2": [(uid, libvirt.VIR_DOMAIN_PAUSED)],
            "host3": [(uid, libvirt.VIR_DOMAIN_RUNNING)],
        }
        r = fence(gc, "status", name)  # every listener now has seen both copies
        assert r.returncode == 0, r.stderr
        pid = faults.daemon_pid(lab, "host3", "fence-listener")
        lab.run_in("host3", ["kill", "-STOP", pid])
        cut = False
        try:
            r = fence(gc, "off", name)
            assert r.returncode == 1, "off succeeded while host3 still runs a copy"
            assert "host3" in r.stderr, r.stderr
            # both copies are powered off where that can be done: the paused one is gone,
            # the running one is out of reach
            assert copies(lab, name) == {"host3": [(uid, libvirt.VIR_DOMAIN_RUNNING)]}
            tried = [e for e in audit(lab) if e.get("plug") == name and e["action"] == "off"]
            assert tried and all(e["code"] == "host-unconfirmed" for e in tried), tried
            assert all("host3 does not answer" in str(e.get("detail")) for e in tried), tried
            n_events = len(lab.power_events())
            lab.power_cut("host3")
            cut = True
            wait_fenced(lab, "host3", n_events, 90)
        finally:
            if not cut:  # after the cut, that PID is gone (and may be another process)
                lab.run_in("host3", ["kill", "-CONT", pid], check=False)
        # the host cluster's fence of host3 came after the copy was last seen there: the
        # same off succeeds (retried as the guest cluster's fencer would)
        results: list[str] = []

        def off_succeeds() -> bool:
            r = fence(gc, "off", name)
            results.append(r.stderr.strip())
            return r.returncode == 0

        try:
            wait_for("the off to succeed after host3's fence", off_succeeds, 120, 2.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the answers: {results[-3:]}") from None
        assert copies(lab, name) == {}


def test_one_name_two_uuids_is_ambiguous_until_the_uuid_is_named(setup: Setup) -> None:
    lab, gc = setup
    name, a, b = "copy2", str(uuid.uuid4()), str(uuid.uuid4())
    give_key(lab, gc, "copies2", name)
    with transient(lab, [("host2", name, a, False), ("host3", name, b, False)]):
        r = fence(gc, "off", name)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "2 different domains" in r.stderr and "fence by UUID" in r.stderr, r.stderr
        for text in (a, b, "host2", "host3"):
            assert text in r.stderr, (text, r.stderr)
        assert copies(lab, name) == {
            "host2": [(a, libvirt.VIR_DOMAIN_RUNNING)],
            "host3": [(b, libvirt.VIR_DOMAIN_RUNNING)],
        }
        refused = [e for e in audit(lab) if e.get("plug") == name and e["action"] == "off"]
        assert refused and all(e["code"] == "ambiguous-name" for e in refused), refused
        r = fence(gc, "off", a)
        assert r.returncode == 0, r.stderr
        assert copies(lab, name) == {"host3": [(b, libvirt.VIR_DOMAIN_RUNNING)]}
        r = fence(gc, "status", b)
        assert (r.returncode, r.stdout.strip()) == (0, "Status: ON"), r.stdout + r.stderr


FLOOD_SOURCES = [f"10.77.0.{i}" for i in range(224, 244)]  # 20 addresses, lab subnet only


@contextlib.contextmanager
def flood(lab: Lab, node: str, target: str) -> Iterator[subprocess.Popen[str]]:
    """From node's namespace, 16 held connections per address from 20 extra addresses
    (more than the listener's 256 unauthenticated slots), until the block ends."""
    ns = lab.cfg.gc_netns(node)
    for a in FLOOD_SOURCES:
        run(["ip", "-n", ns, "addr", "add", f"{a}/24", "dev", "eth0"])
    argv = ["ip", "netns", "exec", ns, "/usr/bin/python3", "-I", "-m", "kvmha.tools.lab.flood"]
    argv += [target, "1230", "hold", str(16 * len(FLOOD_SOURCES))]
    for a in FLOOD_SOURCES:
        argv += ["--source", a]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        start_new_session=True,
    )
    try:
        time.sleep(3.0)  # the slots full before the first request
        assert proc.poll() is None, proc.communicate()[1]
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        for a in FLOOD_SOURCES:
            run(["ip", "-n", ns, "addr", "del", f"{a}/24", "dev", "eth0"], check=False)


def test_a_flood_on_one_listener_does_not_stop_fencing_through_the_others(
    setup: Setup,
) -> None:
    lab, gc = setup
    guest = guest_on(lab, "host1")  # every answer about it needs host1's listener
    t0 = time.time()
    with flood(lab, "guest3", lab.cfg.host_address("host1")):
        # the flood holds host1's slots: a client going to host1 alone is turned away (a
        # slot a flood thread has just left may be taken first: one refusal in five tries)
        host1 = lab.cfg.host_address("host1")
        alone = ["fence_kvmha", "-o", "status", "-n", guest, "-k", GUEST_KEY, "-a", host1]
        answers = [gc.run_in(CLIENT, alone, timeout=60, check=False) for _ in range(5)]
        assert any(a.returncode == 1 and "too many connections" in a.stderr for a in answers), [
            (a.returncode, a.stderr.strip()) for a in answers
        ]
        fence_and_check_rebooted(lab, gc, guest, "guest1" if guest != "guest1" else "guest2")

    def flooded_records() -> list[dict[str, Any]]:
        return [e for e in audit(lab) if audit_t(e) >= t0 - 1 and e.get("peer") in FLOOD_SOURCES]

    # the counts beyond 20 per address and 10 s are written when the window ends, at the
    # latest by the listener's next survey (survey_interval, 10 s)
    wait_for(
        "the suppressed counts in the audit log",
        lambda: any(e["code"] == "suppressed" for e in flooded_records()),
        30,
        1.0,
    )
    flooded = flooded_records()
    assert all(e["result"] == "refused" for e in flooded)
    suppressed = sum(int(e.get("count", 0)) for e in flooded if e["code"] == "suppressed")
    print(f"flood: {len(flooded)} records, {suppressed} refusals counted in aggregate")
    # aggregated: at most 20 one-by-one records per address and 10 s window
    per_source: dict[str, int] = {}
    for e in flooded:
        if e["code"] != "suppressed":
            per_source[e["peer"]] = per_source.get(e["peer"], 0) + 1
    window = max(10.0, time.time() - t0)
    assert max(per_source.values()) <= 20 * (window // 10 + 2), per_source
    for h in lab.cfg.host_names():
        log = lab.cfg.host_dir(h) / "var/log/kvmha/fence-listener.out"
        if log.exists():
            assert "Traceback" not in log.read_text(errors="replace"), h


def audit_t(e: dict[str, Any]) -> float:
    import calendar

    return float(calendar.timegm(time.strptime(e["time"][:19], "%Y-%m-%dT%H:%M:%S")))


def guest_on(lab: Lab, host: str) -> str:
    """A guest of the lab that runs on host (guest2 is moved there if none does)."""
    for g in lab.cfg.guest_names():
        if [h for h, _ in instances(lab, g)] == [host]:
            return g
    lab.run_in(host, ["crm_resource", "--move", "-r", "guest2", "--node", host])
    try:
        wait_for(
            f"guest2 on {host}", lambda: [h for h, _ in instances(lab, "guest2")] == [host], 120
        )
    finally:
        lab.run_in(host, ["crm_resource", "--clear", "-r", "guest2"], check=False)
    return "guest2"
