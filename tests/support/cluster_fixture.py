"""A host cluster on paper: a real crm_mon capture and a CIB that matches it, patched into
kvmha.pcmk so that the CLI's reports run without a cluster."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmha import pcmk

CRM_MON = Path(__file__).resolve().parents[1] / "unit" / "data" / "crm_mon_after_fence.xml"

CIB = """<cib><configuration>
<crm_config>
  <cluster_property_set id="kvmha-datacentres">
    <nvpair id="kvmha-datacentres-kvmha-dc-dev" name="kvmha-dc-dev" value="dev"/>
    <nvpair id="kvmha-datacentres-kvmha-dc-qa" name="kvmha-dc-qa" value="qa"/>
  </cluster_property_set>
</crm_config>
<nodes>
  <node id="1" uname="host1"><instance_attributes id="n1">
    <nvpair id="n1-dc" name="kvmha-dc" value="dev"/></instance_attributes></node>
  <node id="2" uname="host2"/>
  <node id="3" uname="host3"><instance_attributes id="n3">
    <nvpair id="n3-dc" name="kvmha-dc" value="qa"/></instance_attributes></node>
</nodes>
<resources>
  <primitive id="lab-power" class="stonith" type="fence_kvmhalab"/>
  <primitive id="guest1" class="ocf" provider="heartbeat" type="VirtualDomain">
    <meta_attributes id="g1-meta"><nvpair id="g1-dc" name="kvmha-dc" value="dev"/>
    <nvpair id="g1-am" name="allow-migrate" value="true"/></meta_attributes>
    <operations><op id="g1-mon" name="monitor" interval="30s" OCF_CHECK_LEVEL="10"/></operations>
  </primitive>
  <primitive id="guest2" class="ocf" provider="heartbeat" type="VirtualDomain"/>
  <primitive id="guest3" class="ocf" provider="heartbeat" type="VirtualDomain"/>
</resources>
<constraints/>
</configuration><status/></cib>"""


@pytest.fixture()
def paper_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """kvmha.pcmk answers from the fixtures; any other cluster call fails the test."""
    state = pcmk.parse_crm_mon(CRM_MON.read_text())
    monkeypatch.setattr(pcmk, "cluster_state", lambda: state)
    monkeypatch.setattr(pcmk, "query_cib", lambda: ET.fromstring(CIB))

    def no_tool(argv: list[str], timeout: float = 30.0) -> str:
        raise AssertionError(f"unexpected cluster call {argv}")

    monkeypatch.setattr(pcmk, "_tool", no_tool, raising=False)
