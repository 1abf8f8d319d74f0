"""kvmha status's #14 parts (down reasons, frozen banner, priority and rules per guest)
on a CIB that crm_simulate left after a host failure, read back with the real crm_mon."""

from __future__ import annotations

import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from kvmha import maintenance, pcmk, placement, plan

from .plan_cib import ENV, GuestSpec, build, settle

HOSTS = {"host1": (4, 4096), "host2": (4, 8192), "host3": (4, 4096)}


def state_of(cib: str) -> pcmk.ClusterState:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d, "cib.xml")
        p.write_text(cib)
        out = subprocess.run(
            pcmk.CRM_MON_ARGV,
            env=dict(ENV, CIB_file=str(p)),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return pcmk.parse_crm_mon(out)


def after_host2_fails() -> str:
    guests = [
        GuestSpec("g1", 2048, prefers="host1", priority="high"),
        GuestSpec("g2", 1024, prefers="host2"),
        GuestSpec("g3", 3584, prefers="host2", priority="low"),
        GuestSpec("g4", 1024, prefers="host3"),
    ]
    cib = ET.fromstring(settle(build(HOSTS, guests), list(HOSTS)))
    placement.apply_copy(cib, placement.after_changes(cib, "g4", "g1"))
    placement.apply_copy(
        cib, placement.affinity_changes(cib, "g2", "g1", together=False, hard=True)
    )
    return plan.simulate(ET.tostring(cib, encoding="unicode"), ["host2"]).cib


def test_status_says_why_a_guest_stays_down_and_shows_the_rules() -> None:
    text = after_host2_fails()
    cib = ET.fromstring(text)
    st = state_of(text)
    assert st.running_on("g3") is None and st.running_on("g2") == "host3"
    ex = maintenance.status_extras(cib, st)
    assert not ex["frozen"]
    (w,) = [w for w in ex["warnings"] if w["code"] == "guest-down"]
    assert w["message"].startswith("g3 stays down: no capacity: needs cpu 1, hv_memory 3584")
    assert "no capacity" in ex["guests"]["g3"]["down_reason"]
    assert ex["guests"]["g1"]["priority"] == "high" and ex["guests"]["g3"]["priority"] == "low"
    assert ex["guests"]["g4"]["after"] == ["g1"]
    assert ex["guests"]["g2"]["apart_from"] == ["g1"]
    assert "down_reason" not in ex["guests"]["g2"]


def test_frozen_cluster_has_a_banner_first_and_no_down_reasons() -> None:
    text = after_host2_fails()
    cib = ET.fromstring(text)
    placement.apply_copy(cib, [placement.SetProperty("maintenance-mode", "true")])
    ex = maintenance.status_extras(cib, state_of(ET.tostring(cib, encoding="unicode")))
    assert ex["frozen"] and ex["warnings"][0]["code"] == "ha-frozen"
    assert ex["warnings"][0]["fix"] == "kvmha ha thaw"
    assert not any(w["code"] == "guest-down" for w in ex["warnings"])


def test_evacuation_plan_live_migrates_and_names_what_cannot_move() -> None:
    guests = [
        GuestSpec("a", 1024, prefers="host1"),
        GuestSpec("b", 1024, prefers="host1"),
        GuestSpec("big", 3900, prefers="host1"),
    ]
    hosts = {"host1": (8, 8192), "host2": (8, 3072), "host3": (8, 3072)}
    cib = settle(build(hosts, guests), list(hosts))
    moves, stuck = maintenance.evacuation_plan(cib, "host1")
    assert sorted(m.guest for m in moves) == ["a", "b"]
    assert all(m.live and m.to in ("host2", "host3") for m in moves)
    (s,) = stuck
    assert s.guest == "big" and s.reason.startswith("no capacity")
