from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.pcmk_runner import Call, UnexpectedCall, pcmk_calls

from kvmha import pcmk
from kvmha.errors import CommandFailed, KvmhaError
from kvmha.fence import cluster as fcluster
from kvmha.pcmk import parse_crm_mon

DATA = Path(__file__).parent / "data"


def test_parse_crm_mon_after_a_fence() -> None:
    st = parse_crm_mon((DATA / "crm_mon_after_fence.xml").read_text())
    assert st.quorate
    assert st.dc == "host1"
    assert st.online_nodes() == ["host1", "host2"]
    assert not st.nodes["host3"].online
    assert st.nodes["host1"].is_dc
    assert st.running_on("guest1") == "host2"
    assert st.running_on("guest2") == "host1"
    assert st.running_on("nosuch") is None
    assert st.resources["lab-power"].agent == "stonith:fence_kvmhalab"
    assert [(e.target, e.status) for e in st.fencing][:2] == [
        ("host3", "success"),
        ("host2", "success"),
    ]
    assert st.fencing[0].delegate == "host1"


# ---- the runner seam: what each call asks the cluster, exactly ------------------------

CRM_NODE_L = "1 host1 member\n2 host2 member\n3 host3 lost\n"
CMAP = (
    "nodelist.node.0.name (str) = host1\n"
    "nodelist.node.0.nodeid (u32) = 1\n"
    "nodelist.node.0.ring0_addr (str) = 10.0.0.11\n"
    "nodelist.node.1.name (str) = host2\n"
    "nodelist.node.1.ring0_addr (str) = 10.0.0.12\n"
    "nodelist.node.2.ring0_addr (str) = host4\n"
)


def test_parse_time() -> None:
    assert pcmk.parse_time("2026-11-25 22:27:13Z") == 1795645633.0
    assert pcmk.parse_time("2026-11-25 23:27:13.5+01:00") == 1795645633.0
    assert pcmk.parse_time("2026-11-25 22:27:13") == 1795645633.0
    for bad in ("", "yesterday", "2026-11-25 22:27:13Z trailing", "2026-11-25"):
        assert pcmk.parse_time(bad) is None


def test_last_fenced_takes_only_successful_power_cuts() -> None:
    st = pcmk.parse_crm_mon((DATA / "crm_mon_after_fence.xml").read_text())
    assert st.last_fenced("host3") == pcmk.parse_time("2026-11-25 22:27:13Z")
    assert st.last_fenced("host2") == pcmk.parse_time("2026-11-25 22:26:25Z")
    assert st.last_fenced("host1") is None
    ev = pcmk.FenceEvent("h", "on", "success", "x", "2026-11-25 22:27:13Z")
    assert not ev.powered_off
    assert not pcmk.FenceEvent("h", "off", "failed", "x", "2026-11-25 22:27:13Z").powered_off


def test_members_and_nodelist_through_the_runner() -> None:
    with pcmk_calls(
        Call(["crm_node", "-l"], CRM_NODE_L),
        Call(["crm_node", "-n"], "host2\n"),
        Call(["corosync-cmapctl", "-b", "nodelist.node"], CMAP),
    ):
        ms = pcmk.members()
        assert [(m.name, m.is_member) for m in ms] == [
            ("host1", True),
            ("host2", True),
            ("host3", False),
        ]
        assert pcmk.local_node_name() == "host2"
        assert pcmk.corosync_nodelist() == {
            "host1": "10.0.0.11",
            "host2": "10.0.0.12",
            "host4": "host4",
        }


def test_set_target_role_and_fence_history_argv() -> None:
    hist = (
        '<pacemaker-result api-version="2.3" request="stonith_admin --history=*">'
        '<fence_history><fence_event action="off" target="host3" status="success" '
        'delegate="host1" completed="2026-11-25 22:27:13Z"/></fence_history>'
        '<status code="0" message="OK"/></pacemaker-result>'
    )
    with pcmk_calls(
        Call(
            [
                "crm_resource",
                "--resource",
                "vm1",
                "--meta",
                "--set-parameter",
                "target-role",
                "--parameter-value",
                "Stopped",
            ]
        ),
        Call(["stonith_admin", "--history=*", "--output-as=xml"], hist),
    ):
        pcmk.set_target_role("vm1", "Stopped")
        (ev,) = pcmk.fence_history()
        assert (ev.target, ev.powered_off, ev.completed_at) == (
            "host3",
            True,
            pcmk.parse_time("2026-11-25 22:27:13Z"),
        )


def test_errors_keep_a_fix() -> None:
    with pcmk_calls(Call(pcmk.CRM_MON_ARGV, "", 102, "Could not connect")):
        with pytest.raises(pcmk.ClusterNotRunning) as ei:
            pcmk.cluster_state()
        assert ei.value.fix and "pacemaker" in ei.value.fix
    with (
        pcmk_calls(Call(["cibadmin", "-Q"], "", 1, "boom")),
        pytest.raises(CommandFailed, match="cibadmin failed"),
    ):
        pcmk.query_cib()
    with pcmk_calls(Call(["cibadmin", "-Q"], "<cib")):
        with pytest.raises(pcmk.ClusterError) as ei2:
            pcmk.query_cib()
        assert ei2.value.fix


def test_the_fake_runner_fails_on_an_unexpected_call() -> None:
    with (
        pytest.raises(UnexpectedCall, match="expected"),
        pcmk_calls(Call(["crm_node", "-l"], CRM_NODE_L)),
    ):
        pcmk.local_node_name()
    with pytest.raises(AssertionError, match="not made"), pcmk_calls(Call(["crm_node", "-l"])):
        pass


def test_cached_cluster_caches_and_never_forgets_a_member() -> None:
    mon = (DATA / "crm_mon_after_fence.xml").read_text()
    c = pcmk.CachedCluster(cib_ttl=1000, status_ttl=1000)
    with pcmk_calls(
        Call(pcmk.CRM_MON_ARGV, mon),
        Call(["corosync-cmapctl", "-b", "nodelist.node"], CMAP),
        Call(["crm_node", "-l"], CRM_NODE_L),
    ):
        assert c.state() is c.state()  # one crm_mon
        hosts = c.hosts()
        assert hosts["host1"] == "10.0.0.11" and hosts["host3"] == "" and "host4" in hosts
        assert c.hosts() == hosts  # cached
    c.cib_ttl = c.status_ttl = 0
    with pcmk_calls(
        Call(pcmk.CRM_MON_ARGV, "", 1, "down"),
        Call(["corosync-cmapctl", "-b", "nodelist.node"], "", 1, "down"),
        Call(["crm_node", "-l"], "", 1, "down"),
    ):
        assert c.hosts() == hosts  # a failed read forgets no host
    with pcmk_calls(Call(pcmk.CRM_MON_ARGV, "", 1, "down")):
        assert c.state() is None  # but a state is never stale


def test_fence_cluster_status_and_guests_through_pcmk(tmp_path: Path) -> None:
    xml = tmp_path / "vm1.xml"
    xml.write_text("<domain><name>vm1</name><uuid>u-1</uuid></domain>")
    conf = (
        "<configuration><resources><group id='g1'><primitive id='vm1' class='ocf' "
        "provider='kvmha' type='Guest'><instance_attributes id='a'>"
        f"<nvpair id='a1' name='config' value='{xml}'/></instance_attributes>"
        "<meta_attributes id='m'><nvpair id='m1' name='kvmha-dc' value='dev'/>"
        "</meta_attributes></primitive></group>"
        "<primitive id='other' class='ocf' provider='heartbeat' type='Dummy'/></resources>"
        "<tags><tag id='prod'><obj_ref id='g1'/></tag></tags></configuration>"
    )
    pc = fcluster.PacemakerCluster(cib_ttl=1000, status_ttl=1000)
    with pcmk_calls(
        Call(["cibadmin", "-Q", "-o", "configuration"], conf),
        Call(pcmk.CRM_MON_ARGV, (DATA / "crm_mon_after_fence.xml").read_text()),
    ):
        g = pc.guests()["vm1"]
        assert (g.rid, g.uuid, g.tags, g.dc) == ("vm1", "u-1", frozenset({"prod"}), "dev")
        st = pc.status()
        assert st is not None and st.placement["guest1"] == ("host2",)
        assert not st.nodes["host3"].online


def test_parse_status_fenced_after_needs_offline_clean_and_later() -> None:
    t3 = pcmk.parse_time("2026-11-25 22:27:13Z")
    assert t3 is not None
    st = fcluster.parse_status((DATA / "crm_mon_after_fence.xml").read_text())
    assert st.fenced == frozenset({"host2", "host3"})
    assert st.fenced_at["host3"] == t3
    assert st.fenced_after("host3", t3 - 1)
    assert not st.fenced_after("host3", t3)  # at the same second: not provably after
    assert not st.fenced_after("host2", 0)  # fenced, but online again
    unclean = dataclasses.replace(
        st, nodes={**st.nodes, "host3": fcluster.NodeInfo(online=False, unclean=True)}
    )
    assert not unclean.fenced_after("host3", 0)  # awaiting fencing again
    assert not fcluster.node_fenced(unclean, "host3")
    assert fcluster.node_fenced(st, "host3")


def test_kvmha_error_is_the_cluster_error() -> None:
    assert issubclass(pcmk.ClusterError, KvmhaError)
    assert fcluster.ClusterError is KvmhaError


def test_parse_time_matches_the_calendar() -> None:
    import calendar
    import random

    rnd = random.Random(7)
    for _ in range(2000):
        tm = (rnd.randint(1970, 2400), rnd.randint(1, 12), rnd.randint(1, 28))
        hh, mm, ss = rnd.randint(0, 23), rnd.randint(0, 59), rnd.randint(0, 59)
        text = f"{tm[0]:04d}-{tm[1]:02d}-{tm[2]:02d} {hh:02d}:{mm:02d}:{ss:02d}Z"
        assert pcmk.parse_time(text) == calendar.timegm((*tm, hh, mm, ss, 0, 0, 0)), text


GUEST_NODE = (
    '<node name="gnode1" id="gnode1" online="true" standby="false" maintenance="false" '
    'pending="false" unclean="false" health="green" shutdown="false" expected_up="false" '
    'is_dc="false" resources_running="1" type="remote" id_as_resource="guest1"/>'
    '<node name="compute9" id="compute9" online="false" standby="false" maintenance="false" '
    'pending="false" unclean="false" health="green" shutdown="false" expected_up="false" '
    'is_dc="false" resources_running="0" type="remote"/>'
)


def test_guest_nodes_are_no_hosts_but_other_remote_nodes_are() -> None:
    """A guest node (Pacemaker Remote in guest1) runs no domains: the fence rule must not
    wait for its listener. A remote node that is not a guest may be a hypervisor: a host."""
    mon = (
        (DATA / "crm_mon_after_fence.xml")
        .read_text()
        .replace("</nodes>", GUEST_NODE + "</nodes>", 1)
    )
    st = parse_crm_mon(mon)
    assert (st.nodes["gnode1"].kind, st.nodes["gnode1"].container) == ("remote", "guest1")
    assert (st.nodes["compute9"].kind, st.nodes["compute9"].container) == ("remote", None)
    assert (st.nodes["host1"].kind, st.nodes["host1"].container) == ("member", None)
    c = pcmk.CachedCluster(cib_ttl=1000, status_ttl=1000)
    with pcmk_calls(
        Call(pcmk.CRM_MON_ARGV, mon),
        Call(["corosync-cmapctl", "-b", "nodelist.node"], CMAP),
        Call(["crm_node", "-l"], CRM_NODE_L + "gnode1 gnode1 member\n"),
    ):
        hosts = c.hosts()
    assert "gnode1" not in hosts and "compute9" in hosts and "host3" in hosts
    cib = ET.fromstring(
        "<cib><configuration><nodes>"
        '<node id="1" uname="host1"/><node id="gnode1" uname="gnode1" type="remote"/>'
        '<node id="compute9" uname="compute9" type="remote"/>'
        "</nodes><resources>"
        '<primitive id="guest1" class="ocf" provider="kvmha" type="Guest">'
        '<meta_attributes id="m"><nvpair id="m1" name="remote-node" value="gnode1"/>'
        "</meta_attributes></primitive></resources></configuration></cib>"
    )
    assert pcmk.guest_node_names(cib) == {"gnode1"}
    assert pcmk.node_names(cib) == ["compute9", "host1"]
