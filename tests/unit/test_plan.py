"""kvmha plan and admission control against Pacemaker's real scheduler: generated CIBs,
settled by crm_simulate, then host failures simulated by crm_simulate (no mocks)."""

from __future__ import annotations

import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.schema import validate

from kvmha import placement, plan
from kvmha.errors import UsageError

from .plan_cib import ENV, GuestSpec, build, settle

HOSTS = {"host1": (4, 4096), "host2": (4, 4096), "host3": (4, 4096)}


def lab_like(**kw: object) -> str:
    """3 hosts of 4096 MiB; g1 2048 on host1, g2 1024 + g3 3072 on host2, g4 1024 on host3."""
    guests = [
        GuestSpec("g1", 2048, prefers="host1"),
        GuestSpec("g2", 1024, prefers="host2"),
        GuestSpec("g3", 3072, prefers="host2"),
        GuestSpec("g4", 1024, prefers="host3"),
    ]
    return settle(build(HOSTS, guests, **kw), list(HOSTS))  # type: ignore[arg-type]


def by_name(s: plan.Scenario) -> dict[str, plan.GuestOutcome]:
    return {g.name: g for g in s.guests}


def crm_simulate_text(cib: str, fail: str) -> str:
    """crm_simulate's own human-readable result, as an independent reading."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d, "cib.xml")
        p.write_text(cib)
        return subprocess.run(
            ["crm_simulate", "-x", str(p), "-S", "-q", "1", "--node-fail", fail],
            capture_output=True,
            text=True,
            check=True,
            env=ENV,
        ).stdout


def test_settled_fixture_runs_every_guest_where_it_was_started() -> None:
    res = plan.simulate(lab_like())
    assert res.starts == []  # quiet already
    assert {g: res.placement[g] for g in ("g1", "g2", "g3", "g4")} == {
        "g1": "host1",
        "g2": "host2",
        "g3": "host2",
        "g4": "host3",
    }


def test_host_failure_places_what_fits_and_says_why_the_rest_stays_down() -> None:
    cib = lab_like()
    p = plan.make_plan(cib, ["host2"])
    (s,) = p.scenarios
    g = by_name(s)
    assert s.fail == ["host2"] and s.quorate and not s.ok
    # balanced: host3 (1024 used) has more room than host1 (2048 used)
    assert (g["g2"].from_, g["g2"].to, g["g2"].action, g["g2"].order) == (
        "host2",
        "host3",
        "restarts",
        1,
    )
    assert g["g3"].to is None and g["g3"].action == "stays-down"
    assert g["g3"].reason.startswith("no capacity: needs cpu 1, hv_memory 3072 MiB")
    assert "host1 cpu 3, hv_memory 2048 MiB" in g["g3"].reason
    assert g["g1"].action == "stays" and g["g4"].action == "stays"
    # the same as crm_simulate's own text report
    revised = crm_simulate_text(cib, "host2").split("Revised Cluster Status:")[1]
    assert "g2\t(ocf:kvmha:Guest):\t Started host3" in revised
    assert "g3\t(ocf:kvmha:Guest):\t Stopped" in revised
    assert s.summary.startswith("if host2 fails: g2 restarts on host3 (1st); g3 stays down")
    js = p.as_json()
    assert js["schema"] == "kvmha.plan.v1" and js["scenarios"][0]["fail"] == ["host2"]
    validate(js)
    validate(plan.make_plan(cib, tolerate=1).as_json())
    assert {"name", "from", "to", "order", "reason"} <= set(js["scenarios"][0]["guests"][0])


def test_default_plan_is_one_scenario_per_host_and_tolerate_counts_sets() -> None:
    cib = lab_like()
    p = plan.make_plan(cib)
    assert [s.fail for s in p.scenarios] == [["host1"], ["host2"], ["host3"]]
    assert not p.ok  # host2 failing leaves g3 down
    assert [s.ok for s in p.scenarios] == [True, False, True]
    p2 = plan.make_plan(cib, tolerate=1)
    assert len(p2.scenarios) == 3
    with pytest.raises(UsageError, match="too large"):
        plan.make_plan(cib, tolerate=3)
    with pytest.raises(UsageError, match="unknown host 'host9'"):
        plan.make_plan(cib, ["host9"])


def test_two_of_three_hosts_failing_loses_quorum_and_everything() -> None:
    (s,) = plan.make_plan(lab_like(), ["host1", "host2"]).scenarios
    assert not s.quorate and not s.ok
    assert all(g.to is None for g in s.guests)
    assert all(g.reason.startswith("no quorum") for g in s.guests)
    (s,) = plan.make_plan(lab_like(), tolerate=2).scenarios[:1]
    assert not s.quorate


def test_anti_affinity_holds_during_failover() -> None:
    """g2 and g4 kept apart: when host2 fails, g2 cannot join g4 on host3."""
    cib = lab_like(apart=(("g2", "g4", "-INFINITY"),))
    (s,) = plan.make_plan(cib, ["host2"]).scenarios
    g = by_name(s)
    assert g["g2"].to == "host1"  # not host3, where g4 runs
    assert g["g4"].to == "host3"
    # g2 apart from g1 as well: Pacemaker would move g4 to host1 to make room for g2 ...
    cib = lab_like(apart=(("g2", "g4", "-INFINITY"), ("g1", "g2", "-INFINITY")))
    (s,) = plan.make_plan(cib, ["host2"]).scenarios
    g = by_name(s)
    assert g["g2"].to is not None
    assert g["g2"].to not in (g["g4"].to, g["g1"].to)
    # ... unless g1, g2, g4 are all kept apart: three guests, two hosts left
    cib = lab_like(
        apart=(("g2", "g4", "-INFINITY"), ("g1", "g2", "-INFINITY"), ("g1", "g4", "-INFINITY"))
    )
    (s,) = plan.make_plan(cib, ["host2"]).scenarios
    g = by_name(s)
    (lost,) = [x for x in ("g1", "g2", "g4") if g[x].to is None]
    assert "kept apart from" in g[lost].reason and "no other host left" in g[lost].reason
    assert len({g[x].to for x in ("g1", "g2", "g4")} - {None}) == 2


def test_data_centre_without_a_host_keeps_its_guest_down() -> None:
    guests = [GuestSpec("q1", 512, dc="qa"), GuestSpec("d1", 512, dc="dev")]
    dcs = {"host1": "dev", "host2": "dev", "host3": "qa"}
    cib = settle(build(HOSTS, guests, host_dc=dcs, dcs=("dev", "qa")), list(HOSTS))
    (s,) = plan.make_plan(cib, ["host3"]).scenarios
    g = by_name(s)
    assert g["q1"].from_ == "host3" and g["q1"].to is None
    assert g["q1"].reason == "data centre qa has no host left"


def test_priority_high_starts_first_and_is_kept_when_not_all_fit() -> None:
    hosts = {"host1": (4, 4096), "host2": (4, 4096), "host3": (4, 3072)}
    guests = [
        GuestSpec("low1", 2048, prefers="host1", priority="low"),
        GuestSpec("high1", 2048, prefers="host2", priority="high"),
        GuestSpec("low2", 2048, prefers="host2", priority="low"),
        GuestSpec("mid", 1024, prefers="host3", priority="medium"),
    ]
    cib = settle(build(hosts, guests), list(hosts))
    (s,) = plan.make_plan(cib, ["host2"]).scenarios
    g = by_name(s)
    # free: host1 2048, host3 2048: both fit
    assert g["high1"].to in ("host1", "host3") and g["low2"].to in ("host1", "host3")
    assert g["high1"].to != g["low2"].to
    # a bigger low guest does not fit; high is placed first
    guests[2] = GuestSpec("low2", 3072, prefers="host2", priority="low")
    cib = settle(build(dict(hosts, host2=(4, 8192)), guests), list(hosts))
    (s,) = plan.make_plan(cib, ["host2"]).scenarios
    g = by_name(s)
    assert g["high1"].to is not None and g["high1"].order == 1
    assert g["low2"].to is None and "no capacity" in g["low2"].reason


def overcommitted(tiers: bool, monkeypatch: pytest.MonkeyPatch) -> plan.Scenario:
    """8 hosts nearly full (CPU), three priority tiers: a host failure makes Pacemaker
    stop low guests and live-migrate others to make room."""
    monkeypatch.setattr(placement, "TIER_ORDERINGS", tiers)
    names = [f"host{i + 1}" for i in range(8)]
    guests = [
        GuestSpec(
            f"vm{i}",
            1024 + 512 * (i % 7),
            cpu=1 + i % 4,
            prefers=names[i % 8],
            priority=("high", "medium", "low")[i % 3],
        )
        for i in range(200)
    ]
    root = ET.fromstring(build({h: (64, 262144) for h in names}, guests))
    placement.apply_copy(root, [placement.SetProperty("enable-startup-probes", "false")])
    cib = settle(ET.tostring(root, encoding="unicode"), names)
    (s,) = plan.make_plan(cib, ["host2"]).scenarios
    return s


def test_tier_orderings_would_block_the_recovery_so_kvmha_writes_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With orderings between the tiers, a low guest's live migration waits for high
    starts that wait for it: crm_simulate reports the transition terminated, and the plan
    says so. Without them (kvmha's choice) the same recovery completes."""
    blocked = overcommitted(True, monkeypatch)
    assert not blocked.ok and "could not complete" in blocked.summary
    fine = overcommitted(False, monkeypatch)
    assert "could not complete" not in fine.summary
    g = by_name(fine)
    lost = [x for x in g.values() if x.to is None]
    assert lost and all("no capacity" in x.reason for x in lost)
    # Pacemaker kept the higher tiers running first
    assert all(x.priority != "high" for x in lost)


def test_after_orders_starts_and_a_missing_dependency_keeps_the_guest_down() -> None:
    cib_text = lab_like()
    cib = ET.fromstring(cib_text)
    placement.apply_copy(cib, placement.after_changes(cib, "g2", "g3"))
    with pytest.raises(UsageError, match="circular --after"):
        placement.after_changes(cib, "g3", "g2")
    with pytest.raises(UsageError, match="after itself"):
        placement.after_changes(cib, "g2", "g2")
    with pytest.raises(UsageError, match="unknown guest 'nope'"):
        placement.after_changes(cib, "g2", "nope")
    (s,) = plan.make_plan(ET.tostring(cib, encoding="unicode"), ["host2"]).scenarios
    g = by_name(s)
    assert g["g3"].to is None
    assert g["g2"].to is None and g["g2"].reason == "starts after g3, which stays down"


def test_affinity_rules_refuse_itself_and_contradictions() -> None:
    cib = ET.fromstring(lab_like())
    with pytest.raises(UsageError, match="relative to itself"):
        placement.affinity_changes(cib, "g1", "g1", together=False, hard=True)
    placement.apply_copy(
        cib, placement.affinity_changes(cib, "g1", "g2", together=False, hard=True)
    )
    with pytest.raises(UsageError, match="already kept apart"):
        placement.affinity_changes(cib, "g2", "g1", together=True, hard=True)
    ch = placement.affinity_changes(cib, "g2", "g1", together=False, hard=False)
    assert isinstance(ch[0], placement.Delete)  # the hard rule is replaced, not doubled
    placement.apply_copy(cib, ch)
    (aff,) = placement.affinities(cib)
    assert not aff.hard and not aff.together


def test_no_fence_device_means_nothing_is_recovered() -> None:
    cib = ET.fromstring(lab_like())
    placement.apply_copy(cib, [placement.Delete("primitive", "power")])
    (s,) = plan.make_plan(ET.tostring(cib, encoding="unicode"), ["host3"]).scenarios
    g = by_name(s)
    assert g["g4"].to is None and "host3 cannot be fenced" in g["g4"].reason
    assert by_name(s)["g1"].to == "host1"


def slots(n: int, extra: list[GuestSpec]) -> str:
    """3 hosts of 4 slots (1024 MiB each), n one-slot guests spread over them."""
    guests = [GuestSpec(f"g{i}", 1024, prefers=f"host{i % 3 + 1}") for i in range(n)]
    return settle(build(HOSTS, guests + extra), list(HOSTS))


def test_admission_refuses_a_guest_that_breaks_n1_and_accepts_one_that_does_not() -> None:
    enable_new = [placement.SetMeta("new", "target-role", None)]
    # 8 of 12 slots: any host's guests fit on the other two; a 9th does not
    cib = slots(8, [GuestSpec("new", 1024, disabled=True)])
    assert plan.make_plan(cib, tolerate=1).ok
    ok, reason, p = plan.admission(cib, enable_new, "new", 1)
    assert not ok and "could not survive the loss of 1 host" in reason, reason
    assert "no capacity" in reason and not p.ok
    ok, reason, _ = plan.admission(cib, enable_new, "new", 0)
    assert ok, reason  # it fits now; only N=1 breaks
    cib = slots(7, [GuestSpec("new", 1024, disabled=True)])
    ok, reason, p = plan.admission(cib, enable_new, "new", 1)
    assert ok and p.ok, reason
    huge = [placement.SetUtilization(False, "new", placement.UTIL_MEMORY, "9000"), *enable_new]
    ok, reason, _ = plan.admission(cib, huge, "new", 1)
    assert not ok and reason.startswith("new could not run: no capacity"), reason


def test_admission_refuses_only_what_makes_things_worse() -> None:
    """The lab-like cluster already loses g3 when host2 fails: a small guest that does
    not add a loss is accepted; a rule that stops a guest now is refused."""
    cib = lab_like()
    assert not plan.make_plan(cib, tolerate=1).ok
    cib_x = ET.fromstring(cib)
    ok, reason, _ = plan.admission(
        cib, [placement.SetUtilization(False, "g4", placement.UTIL_MEMORY, "512")], "g4", 1
    )
    assert ok, reason
    # g1 (2048) together with g3 (3072) cannot fit on one 4096 MiB host
    ch = placement.affinity_changes(cib_x, "g1", "g3", together=True, hard=True)
    ok, reason, _ = plan.admission(cib, ch, "g1", 1)
    assert not ok, reason
    assert "stopped now" in reason or "could not run" in reason, reason


def test_domain_size_reads_vcpus_and_memory_units(tmp_path: Path) -> None:
    x = tmp_path / "d.xml"
    x.write_text("<domain><name>d</name><memory unit='GiB'>2</memory><vcpu>3</vcpu></domain>")
    assert placement.domain_size(x) == (3, 2048)
    x.write_text("<domain><name>d</name><memory>262144</memory></domain>")
    assert placement.domain_size(x) == (1, 256)
    x.write_text("<domain><name>d</name></domain>")
    with pytest.raises(UsageError, match="no <memory>"):
        placement.domain_size(x)


def test_after_overrides_the_tiers_without_a_cycle() -> None:
    """A high guest after a low one: the tier ordering (high before low) would close a
    cycle with it; the --after guests are left out of the tiers, so Pacemaker still
    finds a valid transition and the high guest waits for its dependency."""
    hosts = {"host1": (8, 8192), "host2": (8, 8192), "host3": (8, 8192)}
    guests = [
        GuestSpec("db", 512, prefers="host2", priority="low"),
        GuestSpec("web", 512, prefers="host2", priority="high"),
        GuestSpec("other", 512, prefers="host2", priority="low"),
    ]
    cib = ET.fromstring(build(hosts, guests))
    placement.apply_copy(cib, placement.after_changes(cib, "web", "db"))
    orders = [o.get("id") for o in cib.iter("rsc_order")]
    assert "kvmha-after-web-db" in orders
    assert not any(
        "web" in ET.tostring(o, encoding="unicode")
        for o in cib.iter("rsc_order")
        if o.get("id", "").startswith("kvmha-priority-order")
    )
    settled = settle(ET.tostring(cib, encoding="unicode"), list(hosts))
    (s,) = plan.make_plan(settled, ["host2"]).scenarios
    g = by_name(s)
    assert s.ok
    assert g["db"].order is not None and g["web"].order is not None
    assert g["db"].order < g["web"].order and "db" in g["web"].waits_for
    placement.apply_copy(cib, placement.no_after_changes(cib, "web", "db"))
    assert not list(cib.iter("rsc_order"))  # no tier orderings are written


def test_host_capacity_covers_every_utilization_the_agent_sets_by_default() -> None:
    """A guest utilization no host defines counts as capacity 0: the guest fits nowhere.
    What the Guest agent sets by default, kvmha host capacity and guest add must write."""
    from kvmha.agents import guest, guest_params

    defaults = {p.name: p.default for p in guest_params.PARAMS}
    agent_sets = {k for k in guest.UTILIZATION if defaults[f"autoset_utilization_{k}"]}
    host = {
        c.name
        for c in placement.host_capacity_changes("h", 4, 4096)
        if isinstance(c, placement.SetUtilization)
    }
    added = {
        c.name
        for c in placement.guest_utilization_changes("g", 1, 512)
        if isinstance(c, placement.SetUtilization)
    }
    assert agent_sets <= host and agent_sets <= added


def test_a_utilization_no_host_defines_is_named_in_the_plan() -> None:
    cib = ET.fromstring(lab_like())
    for util in cib.iterfind("configuration/nodes/node/utilization"):
        for nv in list(util):  # hosts written before kvmha knew host_memory
            if nv.get("name") == "host_memory":
                util.remove(nv)
    placement.apply_copy(cib, [placement.SetUtilization(False, "g2", "host_memory", "1024")])
    (s,) = plan.make_plan(ET.tostring(cib, encoding="unicode"), ["host2"]).scenarios
    g2 = by_name(s)["g2"]
    assert g2.action == "stays-down"
    assert "no host defines host_memory: Pacemaker counts it as 0" in g2.reason
