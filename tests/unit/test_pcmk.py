from __future__ import annotations

from pathlib import Path

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
