"""The cluster's report: hosts, guests, fencing and warnings, from crm_mon and the CIB.

Owns the one record of what ``kvmha status``, ``guest list`` and ``dc show`` print (and the
console reads). Cluster facts only: the tools add what this host's network check finds
(kvmha.tools.cluster_cli), so the core imports no netcfg.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from kvmha import datacentre, pcmk
from kvmha.guests import agent_of, guest_primitives, guest_state


def interval_ms(text: str) -> int:
    """Pacemaker interval spec (10, 10s, 1min, 500ms, 1h) in milliseconds."""
    m = re.fullmatch(r"\s*(\d+)\s*(ms|msec|s|sec|m|min|h|hr)?\s*", text or "0")
    if not m:
        return 0
    n = int(m.group(1))
    factor = {
        None: 1000,
        "s": 1000,
        "sec": 1000,
        "ms": 1,
        "msec": 1,
        "m": 60000,
        "min": 60000,
        "h": 3600000,
        "hr": 3600000,
    }[m.group(2)]
    return n * factor


def deep_monitor_interval(prim: ET.Element) -> int | None:
    for op in prim.iterfind("operations/op"):
        if op.get("name") != "monitor":
            continue
        level = op.get("OCF_CHECK_LEVEL") or pcmk.nvpairs(op, "instance_attributes").get(
            "OCF_CHECK_LEVEL", "0"
        )
        if level.isdigit() and int(level) >= 10:
            return interval_ms(op.get("interval", "0"))
    return None


def health(cib: ET.Element, rid: str, prim: ET.Element, host: str | None) -> str:
    ms = deep_monitor_interval(prim)
    if ms is None:
        return "not configured"
    if host is None:
        return "-"
    for st in cib.iterfind("status/node_state"):
        if st.get("uname") != host:
            continue
        for op in st.iter("lrm_rsc_op"):
            if op.get("operation_key") == f"{rid}_monitor_{ms}":
                if op.get("rc-code") == "0":
                    return "ok"
                return f"failing: {op.get('exit-reason') or 'rc ' + op.get('rc-code', '?')}"
    return "pending"


def host_state(st: pcmk.ClusterState, host: str) -> str:
    node = st.nodes.get(host)
    if node is None:
        return "unknown"
    if node.online:
        return "standby" if node.standby else "online"
    if node.unclean:
        return "unclean"
    fenced = [
        e
        for e in st.fencing
        if e.target == host and e.status == "success" and e.action in ("off", "reboot")
    ]
    return "fenced" if fenced else "offline"


def report() -> dict[str, Any]:
    st = pcmk.cluster_state()
    cib = pcmk.query_cib()
    guests_cfg = guest_primitives(cib)
    hosts = []
    for h in pcmk.node_names(cib):
        hosts.append(
            {
                "name": h,
                "state": host_state(st, h),
                "dc": pcmk.node_attribute(cib, h, datacentre.ATTR),
                "designated_controller": h == st.dc,
                "guests": sum(1 for g in guests_cfg if st.running_on(g) == h),
            }
        )
    guests = []
    for rid, prim in sorted(guests_cfg.items()):
        host = st.running_on(rid)
        state = guest_state(st.resources.get(rid))
        guests.append(
            {
                "name": rid,
                "host": host,
                "state": state,
                "health": health(cib, rid, prim, host),
                "fail_count": st.fail_counts.get(rid, 0),
                "dc": datacentre.guest_dc(prim),
                "agent": agent_of(prim),
            }
        )
    guest_nodes = []
    for name, node in sorted(st.nodes.items()):
        if node.kind != "remote":
            continue
        guest_nodes.append(
            {
                "name": name,
                "guest": node.container,  # None: a remote node that is not a guest
                "state": ("online" if node.online else "unclean" if node.unclean else "offline"),
                "host": st.running_on(node.container) if node.container else None,
                "resources": sorted(
                    rid
                    for rid, r in st.resources.items()
                    if r.active and name in r.nodes and rid not in guests_cfg
                ),
            }
        )
    devices = []
    for rid, prim in pcmk.primitives(cib).items():
        if prim.get("class") == "stonith":
            r = st.resources.get(rid)
            devices.append(
                {
                    "id": rid,
                    "agent": prim.get("type"),
                    "host": r.nodes[0] if r and r.nodes else None,
                    "state": "started" if r and r.active else "stopped",
                }
            )
    events = [
        {
            "target": e.target,
            "action": e.action,
            "status": e.status,
            "delegate": e.delegate,
            "completed": e.completed,
        }
        for e in sorted(st.fencing, key=lambda e: e.completed, reverse=True)[:5]
    ]
    # issue #14: frozen banner, priority/order/affinity per guest, damping alerts
    from kvmha.maintenance import status_extras

    extras = status_extras(cib, st)
    for g in guests:
        g.update(extras["guests"].get(g["name"], {}))
    return {
        "cluster": {
            "quorate": st.quorate,
            "designated_controller": st.dc,
            "stonith_enabled": st.stonith_enabled,
            "frozen": extras["frozen"],
        },
        "hosts": hosts,
        "guests": guests,
        "guest_nodes": guest_nodes,
        "fencing": {"devices": devices, "events": events},
        "warnings": extras["warnings"] + warnings(st, devices, guests, hosts),
    }


def warnings(
    st: pcmk.ClusterState,
    devices: list[dict[str, Any]],
    guests: list[dict[str, Any]],
    hosts: list[dict[str, Any]],
) -> list[dict[str, str]]:
    out = []

    def warn(code: str, message: str, fix: str) -> None:
        out.append({"code": code, "message": message, "fix": fix})

    if not st.stonith_enabled:
        warn(
            "stonith-disabled",
            "fencing is disabled: a failed host's guests are not " "recovered safely",
            "pcs property set stonith-enabled=true",
        )
    elif not devices:
        warn(
            "no-fence-device",
            "fencing is enabled but no fence device is configured: "
            "nothing starts, failed hosts stay unclean",
            "pcs stonith create ...",
        )
    if not st.quorate:
        warn(
            "no-quorum",
            "this partition has no quorum: it runs nothing",
            "bring the other hosts back, or check the network between them",
        )
    for h in hosts:
        if h["state"] == "unclean":
            warn(
                "host-unclean",
                f"{h['name']} is unclean and not fenced yet",
                "check the fence device (pcs stonith status)",
            )
    for g in guests:
        if g["state"] == "failed":
            warn(
                "guest-failed",
                f"{g['name']} failed",
                f"see 'pcs resource status {g['name']}', then 'pcs resource cleanup {g['name']}'",
            )
        elif g["health"].startswith("failing"):
            warn(
                "guest-unhealthy",
                f"{g['name']}: {g['health']}",
                "the cluster recovers it; see the guest's service",
            )
    return out
