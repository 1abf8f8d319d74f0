"""Generated CIBs for the plan tests and bench/scale.py: hosts with capacity, guests with
utilization, kvmha's constraints, and a status section in which every guest runs where
Pacemaker's own scheduler put it (crm_simulate settles the cluster first).

Nothing here guesses a placement: the status comes out of crm_simulate.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclasses.dataclass
class GuestSpec:
    name: str
    memory: int = 1024  # MiB
    cpu: int = 1
    priority: str | None = None  # high|medium|low
    dc: str | None = None
    prefers: str | None = None  # host it starts on (a location score of 50)
    disabled: bool = False


def _nv(parent: ET.Element, tag: str, set_id: str, values: dict[str, str]) -> ET.Element:
    el = ET.SubElement(parent, tag, id=set_id)
    for k, v in values.items():
        ET.SubElement(el, "nvpair", id=f"{set_id}-{k}", name=k, value=v)
    return el


def build(
    hosts: dict[str, tuple[int, int]],
    guests: list[GuestSpec],
    *,
    apart: tuple[tuple[str, str, str], ...] = (),
    host_dc: dict[str, str] | None = None,
    dcs: tuple[str, ...] = (),
    stonith: bool = True,
    strategy: str = "balanced",
) -> str:
    """A CIB (configuration only): hosts {name: (cpu, memory MiB)}, guests, anti-affinity
    pairs (a, b, score)."""
    from kvmha import placement

    root = ET.fromstring(
        subprocess.run(
            ["cibadmin", "--empty"], capture_output=True, text=True, check=True, env=ENV
        ).stdout
    )
    conf = root.find("configuration")
    assert conf is not None
    crm = conf.find("crm_config")
    nodes = conf.find("nodes")
    res = conf.find("resources")
    cons = conf.find("constraints")
    assert crm is not None and nodes is not None and res is not None and cons is not None
    _nv(
        crm,
        "cluster_property_set",
        "cib-bootstrap-options",
        {
            "stonith-enabled": "true" if stonith else "false",
            "placement-strategy": strategy,
            "no-quorum-policy": "stop",
        },
    )
    if dcs:
        _nv(crm, "cluster_property_set", "kvmha-datacentres", {f"kvmha-dc-{d}": d for d in dcs})
    rd = ET.SubElement(conf, "rsc_defaults")
    _nv(rd, "meta_attributes", "rsc-options", {"resource-stickiness": "100"})
    for i, (h, (cpu, mem)) in enumerate(sorted(hosts.items()), 1):
        n = ET.SubElement(nodes, "node", id=str(i), uname=h)
        if host_dc and h in host_dc:
            _nv(n, "instance_attributes", f"nodes-{i}", {"kvmha-dc": host_dc[h]})
        _nv(
            n,
            "utilization",
            f"nodes-{i}-utilization",
            {k: str(cpu if k == placement.UTIL_CPU else mem) for k in placement.HOST_UTILIZATION},
        )
    if stonith:
        f = ET.SubElement(res, "primitive", id="power", type="fence_dummy")
        f.set("class", "stonith")
        _nv(f, "instance_attributes", "power-attrs", {"pcmk_host_list": " ".join(sorted(hosts))})
    for g in guests:
        p = ET.SubElement(res, "primitive", id=g.name, provider="kvmha", type="Guest")
        p.set("class", "ocf")
        _nv(p, "instance_attributes", f"{g.name}-attrs", {"config": f"/shared/{g.name}.xml"})
        meta = {"allow-migrate": "true"}
        if g.dc:
            meta["kvmha-dc"] = g.dc
        if g.disabled:
            meta["target-role"] = "Stopped"
        _nv(p, "meta_attributes", f"{g.name}-meta", meta)
        _nv(
            p,
            "utilization",
            f"{g.name}-utilization",
            {placement.UTIL_CPU: str(g.cpu), placement.UTIL_MEMORY: str(g.memory)},
        )
        ops = ET.SubElement(p, "operations")
        ET.SubElement(
            ops, "op", id=f"{g.name}-monitor-10s", name="monitor", interval="10s", timeout="30s"
        )
        if g.prefers:
            ET.SubElement(
                cons,
                "rsc_location",
                id=f"start-{g.name}",
                rsc=g.name,
                node=g.prefers,
                score="50",
            )
        if g.dc:
            from kvmha import datacentre

            cons.append(ET.fromstring(datacentre.placement_constraint(g.name, g.dc)))
    for g in guests:
        if g.priority:
            placement.apply_copy(root, placement.priority_changes(root, g.name, g.priority))
    for a, b, score in apart:
        hard = score == "-INFINITY"
        placement.apply_copy(
            root, placement.affinity_changes(root, a, b, together=False, hard=hard)
        )
    return ET.tostring(root, encoding="unicode")


def settle(cib: str, hosts: list[str]) -> str:
    """The CIB with a status section: every host up, everything started where the
    scheduler puts it (crm_simulate -S), then the location hints removed so that only
    stickiness keeps guests where they run."""
    with tempfile.TemporaryDirectory() as d:
        src = Path(d, "in.xml")
        out = Path(d, "out.xml")
        src.write_text(cib)
        argv = ["crm_simulate", "-x", str(src), "-S", "-Q", "-q", "1", "-O", str(out)]
        for h in hosts:
            argv += ["-u", h]
        subprocess.run(argv, capture_output=True, text=True, check=True, env=ENV, timeout=3600)
        root = ET.parse(out).getroot()
    cons = root.find("configuration/constraints")
    assert cons is not None
    for c in list(cons):
        if c.get("id", "").startswith("start-"):
            cons.remove(c)
    return ET.tostring(root, encoding="unicode")


def write(path: Path, cib: str) -> Path:
    path.write_text(cib)
    os.chmod(path, 0o600)
    return path
