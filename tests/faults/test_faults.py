"""The fault suite: one scenario per fault, each with its expected outcome.

Every scenario runs under the watcher, which asks every powered host's libvirt once a
second which guests it runs: no guest may ever run on two hosts at once, and the guests
a fault hit must run again, each on one host, within the bound.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
from integration.helpers import wait_for

from kvmha.tools.lab import faults
from kvmha.tools.lab.chaos import inject_and_recover
from kvmha.tools.lab.lab import Lab
from kvmha.tools.lab.watch import Watcher

pytestmark = pytest.mark.lab
BOUND = 150.0


@pytest.fixture()
def watched(lab3: Lab) -> Iterator[Watcher]:
    faults.restore(lab3)
    with Watcher(lab3) as w:
        assert w.wait_running_once(lab3.cfg.guest_names(), BOUND) is not None
        yield w
        assert w.violations == [], w.violations
    faults.restore(lab3)


def fence_events(lab: Lab, host: str) -> int:
    return sum(
        1
        for e in lab.power_events()
        if e["host"] == host and e["origin"] == "fence" and e["result"] == "ok"
    )


@pytest.mark.parametrize("kind", ["power-cut", "corosync-kill", "isolate"])
def test_host_failure(lab3: Lab, watched: Watcher, kind: str) -> None:
    """The host is fenced through the power switch and its guests run elsewhere."""
    fenced = {h: fence_events(lab3, h) for h in lab3.cfg.host_names()}
    inj, hit, took = inject_and_recover(lab3, watched, kind, random.Random(1), BOUND)
    assert hit, "the fault hit no guest"
    assert took is not None, f"{hit} did not run again within {BOUND} s"
    assert inj.host is not None
    assert fence_events(lab3, inj.host) > fenced[inj.host]
    assert not lab3.powered(inj.host)
    where = watched.current()
    assert all(where[g] != [inj.host] for g in hit)
    print(f"{kind}: {hit} running again after {took:.1f} s")


def test_guest_qemu_killed(lab3: Lab, watched: Watcher) -> None:
    inj, hit, took = inject_and_recover(lab3, watched, "qemu-kill", random.Random(2), BOUND)
    assert took is not None, f"{inj.guest} did not run again"


def boots(lab: Lab) -> dict[str, int]:
    out = {}
    for g in lab.cfg.guest_names():
        with open(lab.cfg.guests_dir / f"{g}.serial.log", "rb") as f:
            out[g] = f.read().count(b"KVMHA-GUEST-USERSPACE")
    return out


def test_libvirtd_killed_while_monitored(lab3: Lab, watched: Watcher) -> None:
    """libvirtd dies and comes back (as systemd would restart it): no guest restarts."""
    before = boots(lab3)
    inj, hit, took = inject_and_recover(lab3, watched, "libvirtd-kill", random.Random(3), BOUND)
    assert took is not None
    time.sleep(25)  # two monitor intervals with the new libvirtd
    assert boots(lab3) == before
    st = lab3.cluster_state()
    assert st is not None and not any(st.resources[g].failed for g in lab3.cfg.guest_names())


def wait_role(lab: Lab, guest: str, roles: tuple[str, ...]) -> str:
    """The host of guest once Pacemaker shows it in one of roles (or with 2 nodes)."""

    def probe() -> str | None:
        st = lab.cluster_state()
        r = st.resources.get(guest) if st else None
        if r is not None and r.nodes and (r.role in roles or len(r.nodes) > 1):
            return r.nodes[0]
        return None

    return wait_for(f"{guest} {'/'.join(roles)}", probe, 120, 0.05)


def kill_libvirtd(lab: Lab, host: str) -> None:
    lab.run_in(host, ["kill", "-9", faults.daemon_pid(lab, host, "libvirtd")])


def running_on(lab: Lab, rsc: str) -> str | None:
    st = lab.cluster_state()
    return st.running_on(rsc) if st else None


def any_host(lab: Lab) -> str:
    """A powered host to run cluster commands on (a fault may have fenced another)."""
    return next(h for h in lab.cfg.host_names() if lab.powered(h))


def test_libvirtd_killed_during_start(lab3: Lab, watched: Watcher) -> None:
    first = any_host(lab3)
    lab3.run_in(first, ["pcs", "resource", "disable", "guest4", "--wait=120"], timeout=150)
    lab3.run_in(any_host(lab3), ["pcs", "resource", "enable", "guest4"])
    host = wait_role(lab3, "guest4", ("Starting",))
    kill_libvirtd(lab3, host)
    took = watched.wait_running_once(lab3.cfg.guest_names(), BOUND)
    assert took is not None, "guest4 did not come up after libvirtd died during its start"


def test_libvirtd_killed_during_stop(lab3: Lab, watched: Watcher) -> None:
    lab3.run_in(any_host(lab3), ["pcs", "resource", "disable", "guest4"])
    try:
        host = wait_role(lab3, "guest4", ("Stopping",))
        fenced = fence_events(lab3, host)
        kill_libvirtd(lab3, host)
        # the agent reconnects to the restarted libvirtd and completes the stop: guest4
        # ends up stopped everywhere, its host is not fenced, the others keep running
        wait_for("guest4 stopped", lambda: not watched.current().get("guest4"), BOUND, 0.5)
        others = [g for g in lab3.cfg.guest_names() if g != "guest4"]
        assert watched.wait_running_once(others, BOUND) is not None
        assert fence_events(lab3, host) == fenced, f"{host} was fenced: the stop failed"
    finally:
        lab3.run_in(any_host(lab3), ["pcs", "resource", "enable", "guest4"])
    assert watched.wait_running_once(lab3.cfg.guest_names(), BOUND) is not None


def test_libvirtd_killed_during_live_migration(lab3: Lab, watched: Watcher) -> None:
    place = faults.placement(lab3)
    source = place["guest4"]
    target = next(h for h in lab3.cfg.host_names() if h != source)
    lab3.run_in(
        any_host(lab3), ["crm_resource", "--move", "--resource", "guest4", "--node", target]
    )
    wait_role(lab3, "guest4", ("Migrating",))
    kill_libvirtd(lab3, source)
    assert watched.wait_running_once(lab3.cfg.guest_names(), BOUND) is not None
    time.sleep(15)
    assert len(watched.current().get("guest4", [])) == 1


def test_config_unreadable_on_one_host(lab3: Lab, watched: Watcher) -> None:
    """The guests' storage vanishes on the host that runs guest4 (VirtualDomain #1231's
    case). The agent reports the running guest from its real state (degraded, never "not
    running" and never a fatal code: docs/agent.md, the return-code contract), so the
    cluster's recurring monitors neither stop it nor start a second copy; a fresh probe
    there finds it (by its mark), and if Pacemaker then recovers it, the stop on that host
    stops the right domain before it starts elsewhere; it runs once throughout."""
    bad = faults.placement(lab3)["guest4"]
    guests_dir = str(lab3.cfg.guests_dir)
    pcmk_log = lab3.cfg.host_dir(bad) / "var/log/pacemaker/pacemaker.log"
    log_before = pcmk_log.stat().st_size
    lab3.run_in(bad, ["mkdir", "-p", "/tmp/empty-guests"])
    lab3.run_in(bad, ["mount", "--bind", "/tmp/empty-guests", guests_dir])
    try:
        # several recurring monitors: guest4 stays where it is, one copy
        until = time.monotonic() + 45
        while time.monotonic() < until:
            where = watched.current().get("guest4", [])
            assert where == [bad], f"guest4 ran on {where} while its config was unreadable"
            time.sleep(1)
        # a fresh probe there finds it (by its mark) and answers degraded; Pacemaker treats a
        # degraded probe as a failure and recovers the guest: then the stop on that host
        # must have found and stopped the running domain before any start elsewhere (the
        # watcher fails the test on any second copy)
        cmd_host = any_host(lab3)
        lab3.run_in(cmd_host, ["crm_resource", "--refresh", "--resource", "guest4", "--node", bad])
        lab3.run_in(
            cmd_host, ["crm_resource", "--wait", "--timeout", "120"], timeout=130, check=False
        )
        where = watched.current().get("guest4", [])
        assert len(where) == 1, where
        if where != [bad]:
            with pcmk_log.open("rb") as f:  # what Pacemaker did on that host since the fault
                f.seek(log_before)
                since = f.read().decode(errors="replace")
            assert f"Result of stop operation for guest4 on {bad}: ok" in since
    finally:
        lab3.run_in(bad, ["umount", guests_dir], check=False)
    assert watched.wait_running_once(lab3.cfg.guest_names(), BOUND) is not None


def test_power_cut_during_live_migration(lab3: Lab, watched: Watcher) -> None:
    """Two faults at once: the source host loses power while a guest migrates away."""
    inj, hit, took = inject_and_recover(
        lab3, watched, "migration-power-cut", random.Random(4), BOUND
    )
    assert took is not None, f"{hit} did not run again within {BOUND} s"
    assert len(watched.current().get(inj.guest or "", [])) == 1


def test_identity_when_resource_id_and_domain_name_differ_and_the_config_vanishes(
    lab3: Lab, watched: Watcher
) -> None:
    """Resource vm9 runs domain guest9 (the usual naming: the id is not the domain's name).
    It live-migrates to a host; there the guests' storage then vanishes, and a domain that
    has nothing to do with it, named vm9 like the resource, runs beside it. A fresh probe
    there must find guest9 by its mark, not vm9 by its name; if Pacemaker then recovers
    the resource, the stop stops guest9 and leaves vm9 alone; guest9 never runs twice."""
    import libvirt

    from kvmha.tools.lab import libvirtconf

    cfg = lab3.cfg
    xml = cfg.guests_dir / "guest9.xml"
    kernel, initrd = str(cfg.image_dir / "vmlinuz"), str(cfg.image_dir / "initrd.img")
    xml.write_text(libvirtconf.guest_domain_xml(cfg, "guest9", kernel, initrd))
    host1 = any_host(lab3)
    pcs = ["pcs", "resource", "create", "vm9", "ocf:kvmha:Guest", f"config={xml}"]
    pcs += ["hypervisor=qemu:///system", "migration_transport=tcp"]
    pcs += ["meta", "allow-migrate=true", "op", "monitor", "interval=10s", "timeout=30s"]
    lab3.run_in(host1, pcs)
    bad = None
    decoy = None
    try:
        src = wait_for("vm9 started", lambda: running_on(lab3, "vm9"), 120, 1.0)
        dst = next(h for h in cfg.host_names() if h != src and lab3.powered(h))
        lab3.run_in(host1, ["crm_resource", "--move", "-r", "vm9", "--node", dst])
        wait_for(
            "vm9 migrated",
            lambda: running_on(lab3, "vm9") == dst and watched.current().get("guest9") == [dst],
            120,
            1.0,
        )
        lab3.run_in(host1, ["crm_resource", "--clear", "-r", "vm9"])
        bad = dst
        # the unrelated domain named like the resource id, on the same host
        other = libvirtconf.guest_domain_xml(cfg, "guest6", kernel, initrd)
        other = other.replace("<name>guest6</name>", "<name>vm9</name>")
        conn = libvirt.open(cfg.libvirt_uri(bad))
        try:
            decoy = conn.createXML(other, 0).ID()
        finally:
            conn.close()
        guests_dir = str(cfg.guests_dir)
        lab3.run_in(bad, ["mkdir", "-p", "/tmp/empty-guests"])
        lab3.run_in(bad, ["mount", "--bind", "/tmp/empty-guests", guests_dir])
        try:
            lab3.run_in(host1, ["crm_resource", "--refresh", "-r", "vm9", "--node", bad])
            lab3.run_in(
                host1, ["crm_resource", "--wait", "--timeout", "150"], timeout=170, check=False
            )
            time.sleep(15)  # recurring monitors wherever it now runs
            assert len(watched.current().get("guest9", [])) == 1, watched.current()
        finally:
            lab3.run_in(bad, ["umount", guests_dir], check=False)
        # the decoy was never touched: the same domain still runs
        conn = libvirt.open(cfg.libvirt_uri(bad))
        try:
            assert conn.lookupByName("vm9").ID() == decoy
        finally:
            conn.close()
        assert watched.violations == [], watched.violations
    finally:
        lab3.run_in(host1, ["crm_resource", "--clear", "-r", "vm9"], check=False)
        lab3.run_in(host1, ["pcs", "resource", "delete", "vm9", "--force"], check=False)
        if bad is not None and decoy is not None:
            conn = libvirt.open(cfg.libvirt_uri(bad))
            try:
                conn.lookupByName("vm9").destroy()
            except libvirt.libvirtError:
                pass
            finally:
                conn.close()
        wait_for("guest9 gone", lambda: "guest9" not in watched.current(), 120, 1.0)
        xml.unlink(missing_ok=True)
