"""The kvmha CLI on a host of the 3-host lab: status, guests, data centres."""

from __future__ import annotations

import json
import subprocess

import pytest

from kvmha.tools.lab import libvirtconf
from kvmha.tools.lab.lab import Lab

from .helpers import wait_fenced, wait_for

pytestmark = pytest.mark.lab


def kvmha_on(
    lab: Lab, host: str, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return lab.run_in(host, ["kvmha", *args], timeout=timeout, check=False)


def write_guest_xml(lab: Lab, name: str) -> str:
    cfg = lab.cfg
    path = cfg.guests_dir / f"{name}.xml"
    path.write_text(
        libvirtconf.guest_domain_xml(
            cfg, name, str(cfg.image_dir / "vmlinuz"), str(cfg.image_dir / "initrd.img")
        )
    )
    return str(path)


def online(lab: Lab, host: str) -> bool:
    st = lab.cluster_state()
    return bool(st and st.nodes.get(host) and st.nodes[host].online)


def test_status(lab3: Lab) -> None:
    r = kvmha_on(lab3, "host1", "status", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(rep) == {
        "schema",
        "cluster",
        "hosts",
        "guests",
        "guest_nodes",
        "fencing",
        "warnings",
    }
    assert rep["guest_nodes"] == []  # lab3 has no Pacemaker Remote guest node
    assert rep["schema"] == "kvmha.status.v1"
    assert [h["name"] for h in rep["hosts"]] == ["host1", "host2", "host3"]
    assert {g["name"] for g in rep["guests"]} >= {"guest1", "guest2", "guest3"}
    for g in rep["guests"]:
        assert set(g) >= {"name", "host", "state", "health", "fail_count", "dc"}
    assert rep["fencing"]["devices"][0]["agent"] == "fence_kvmhalab"
    table = kvmha_on(lab3, "host1", "status")
    assert table.returncode == 0
    assert "\x1b[" not in table.stdout  # no colour codes when piped
    assert "GUEST" in table.stdout and "lab-power" in table.stdout


def test_data_centre_keeps_its_guest_on_its_hosts(lab3: Lab) -> None:
    """A qa guest runs only on qa hosts, also after its host loses power."""
    xml = write_guest_xml(lab3, "guest5")
    for args in (
        ("dc", "create", "qa"),
        ("dc", "create", "dev"),
        ("dc", "add-host", "dev", "host1"),
        ("dc", "add-host", "dev", "host2"),
        ("dc", "add-host", "qa", "host3"),
    ):
        r = kvmha_on(lab3, "host1", *args)
        assert r.returncode == 0, r.stderr
    try:
        r = kvmha_on(
            lab3,
            "host1",
            "guest",
            "add",
            "guest5",
            "--xml",
            xml,
            "--dc",
            "qa",
            "--health",
            "agent",
            "--health",
            "http=http://10.77.0.105/health",
            "--transport",
            "tcp",
            # a data centre of one host cannot survive its loss: admission control would
            # refuse (docs/plan.md); this test is about where the guest may run
            "--tolerate",
            "0",
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "guest5 runs on host3"
        shown = json.loads(kvmha_on(lab3, "host2", "dc", "show", "qa", "--json").stdout)
        assert [h["name"] for h in shown["hosts"]] == ["host3"]
        assert [g["name"] for g in shown["guests"]] == ["guest5"]
        listed = json.loads(kvmha_on(lab3, "host2", "dc", "list", "--json").stdout)
        assert {d["name"]: d["hosts"] for d in listed["data_centres"]} == {
            "dev": ["host1", "host2"],
            "qa": ["host3"],
        }
        # the only qa host loses power: guest5 must stay stopped, not move to a dev host
        events = len(lab3.power_events())
        lab3.power_cut("host3")
        wait_fenced(lab3, "host3", events, 60)
        lab3.run_in(
            "host1", ["crm_resource", "--wait", "--timeout", "120"], timeout=130, check=False
        )
        st = lab3.cluster_state()
        assert st is not None and st.running_on("guest5") is None
        sim = lab3.run_in("host1", ["crm_simulate", "--live-check", "--simulate"]).stdout
        summary = sim.split("Transition Summary:", 1)[1]
        assert "guest5" not in summary or "Start" not in summary.split("guest5", 1)[1][:60]
        # a qa guest may not be moved to a dev host by hand either
        r = kvmha_on(lab3, "host1", "guest", "migrate", "guest5", "host1")
        assert r.returncode == 2 and "not running" in r.stderr
        lab3.power_on("host3")
        wait_for(
            "guest5 back on host3",
            lambda: (lambda s: s and s.running_on("guest5"))(lab3.cluster_state()) == "host3",
            180,
        )
    finally:
        if not lab3.powered("host3"):
            lab3.power_on("host3")
        wait_for("host3 online", lambda: online(lab3, "host3"), 120)
        kvmha_on(lab3, "host1", "guest", "remove", "guest5")
        for h in ("host1", "host2", "host3"):
            lab3.run_in(
                "host1",
                ["crm_attribute", "--type", "nodes", "--node", h, "--name", "kvmha-dc", "--delete"],
                check=False,
            )


def test_guest_lifecycle_and_migration_with_progress(lab3: Lab) -> None:
    xml = write_guest_xml(lab3, "guest6")
    r = kvmha_on(lab3, "host1", "guest", "add", "guest6", "--xml", xml, "--transport", "tcp")
    assert r.returncode == 0, r.stderr
    try:
        source = r.stdout.split()[-1]
        target = next(h for h in ("host1", "host2", "host3") if h != source)
        wait_for("guest6 ready", lambda: lab3.guest_ready_since("guest6", 0), 60)
        r = kvmha_on(lab3, "host1", "guest", "migrate", "guest6", target)
        assert r.returncode == 0, r.stderr
        assert f"guest6 migrated to {target}" in r.stdout
        assert "100% guest6 runs on " + target in r.stdout  # progress, plain when piped
        cons = lab3.run_in("host1", ["cibadmin", "-Q", "-o", "constraints"]).stdout
        assert "cli-prefer-guest6" not in cons  # the move constraint was cleared
        r = kvmha_on(lab3, "host1", "guest", "stop", "guest6")
        assert r.returncode == 0, r.stderr
        listed = json.loads(kvmha_on(lab3, "host1", "guest", "list", "--json").stdout)
        assert next(g for g in listed["guests"] if g["name"] == "guest6")["state"] == "stopped"
        assert kvmha_on(lab3, "host1", "guest", "start", "guest6").returncode == 0
    finally:
        r = kvmha_on(lab3, "host1", "guest", "remove", "guest6")
        assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["guest", "stop", "nosuch"], "unknown guest 'nosuch'"),
        (["guest", "migrate", "guest1", "host9"], "unknown host 'host9'"),
        (["dc", "show", "nosuch"], "unknown data centre 'nosuch'"),
        (["dc", "create", "Bad Name"], "bad data centre name"),
        (["guest", "add", "guest7", "--xml", "/etc/hostname"], "is not well-formed XML"),
        (
            ["guest", "add", "guest7", "--xml", "/etc/corosync/corosync.conf"],
            "is not well-formed XML",
        ),
        (["guest", "add", "guest7", "--xml", "/nonexistent.xml"], "cannot read"),
        (["guest", "add", "guest7", "--xml", "/x.xml", "--health", "ftp=x"], "bad --health"),
    ],
)
def test_bad_input(lab3: Lab, args: list[str], message: str) -> None:
    r = kvmha_on(lab3, "host1", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("kvmha: error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_guest_xml_that_is_not_a_domain(lab3: Lab) -> None:
    net = lab3.cfg.guests_dir / "net.xml"
    net.write_text("<network><name>default</name></network>")
    r = kvmha_on(lab3, "host1", "guest", "add", "net", "--xml", str(net))
    assert r.returncode == 2
    assert "is not a libvirt domain" in r.stderr
