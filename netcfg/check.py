"""``kvmha net check``: read the link stack, apply the rules, a verdict per bridge."""

from __future__ import annotations

import time
from typing import Any

from kvmha.netcfg import links, rules
from kvmha.netcfg.links import Snapshot
from kvmha.netcfg.stack import entry_dict, master_map, walk

EXIT_CODES = {"ok": 0, "warning": 1, "incompatible": 2}


def check_snapshot(snap: Snapshot) -> dict[str, Any]:
    """The report for a snapshot: {"netns", "bridges": [{name, verdict, findings, stack}]}."""
    by_master = master_map(snap)
    bridges = []
    for br in sorted((x for x in snap.links.values() if x.kind == "bridge"), key=lambda x: x.name):
        stack = walk(snap, br, by_master)
        findings = rules.evaluate(snap, br, stack)
        verdict = rules.verdict(findings)
        if not findings:
            findings.append(
                rules.Finding(
                    rules.INFO,
                    "bridge-ok",
                    f"no problems found in the {len(stack)} link(s) of {br.name}",
                    rules.REF_KVMHA,
                    br.name,
                )
            )
        bridges.append(
            {
                "name": br.name,
                "verdict": verdict,
                "findings": [f.to_dict() for f in findings],
                "stack": [entry_dict(e, snap) for e in stack],
            }
        )
    return {"netns": snap.netns, "links": len(snap.links), "bridges": bridges}


def check(netns: str | None = None) -> dict[str, Any]:
    t0 = time.monotonic()
    snap = links.read(netns)
    report = check_snapshot(snap)
    report["elapsed_s"] = round(time.monotonic() - t0, 4)
    return report


def exit_code(report: dict[str, Any]) -> int:
    return max((EXIT_CODES[b["verdict"]] for b in report["bridges"]), default=0)


def _describe(e: dict[str, Any]) -> str:
    parts = [e["kind"]]
    if "bond" in e:
        b = e["bond"]
        parts.append(f"mode {b['mode']} {b['mode_name']}")
        parts.append(f"miimon {b['miimon']}")
        if b["arp_interval"]:
            parts.append(f"arp {b['arp_interval']}ms {','.join(b['arp_ip_target'])}")
        if b.get("active_slave"):
            parts.append(f"active {b['active_slave']}")
        if "ad" in b:
            parts.append(f"partner {b['ad']['partner_mac']} agg {b['ad']['aggregator']}")
    if "vlan_id" in e:
        parts.append(f"vid {e['vlan_id']}")
    if e.get("vlan_filtering"):
        parts.append("vlan_filtering")
    parts.append(f"mtu {e['mtu']}")
    parts.append(e["operstate"].lower())
    if "port_state" in e:
        parts.append(e["port_state"])
    if "bond_slave" in e:
        s = e["bond_slave"]
        parts.append(f"{s['state']}, mii {s['mii_status']}")
    return ", ".join(str(p) for p in parts)


def render_table(report: dict[str, Any]) -> str:
    lines: list[str] = []
    where = f"netns {report['netns']}" if report["netns"] else "this host"
    if not report["bridges"]:
        return f"no bridges in {where} ({report['links']} links)\n"
    lines.append(f"{'BRIDGE':16} {'VERDICT':13} FINDINGS  ({where}, {report['links']} links)")
    for b in report["bridges"]:
        n = sum(1 for f in b["findings"] if f["severity"] != "info")
        lines.append(f"{b['name']:16} {b['verdict']:13} {n}")
    for b in report["bridges"]:
        lines.append("")
        lines.append(f"== {b['name']}: {b['verdict']}")
        for e in b["stack"]:
            role = "" if e["role"] == "bridge" else f"{e['role']} "
            lines.append(f"   {'  ' * e['depth']}{role}{e['name']} ({_describe(e)})")
        for f in b["findings"]:
            lines.append(f"   {f['severity'].upper():12} {f['code']}: {f['message']}")
            lines.append(f"   {'':12} ref: {f['reference']}")
    return "\n".join(lines) + "\n"
