"""Guests as cluster resources: ocf:kvmha:Guest primitives, created and driven with pcs
and crm_resource (through kvmha.pcmk), and a guest's state as one word.

Owns what ``kvmha guest`` changes and the one answer to "what state is this guest in"
(``guest_state``) that status, the lab and the console share.
"""

from __future__ import annotations

import dataclasses
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from kvmha import datacentre, pcmk
from kvmha.endpoint import split_host_port
from kvmha.errors import KvmhaError, UsageError
from kvmha.virt import DomainXMLError, parse_domain

AGENTS = ("ocf:kvmha:Guest", "ocf:heartbeat:VirtualDomain")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
HEALTH_KINDS = ("agent", "http", "tcp", "command")


@dataclasses.dataclass(frozen=True)
class HealthCheck:
    kind: str
    value: str

    @classmethod
    def parse(cls, spec: str) -> HealthCheck:
        kind, _, value = spec.partition("=")
        if kind == "agent" and not value:
            return cls("agent", "")
        if kind in ("http", "tcp", "command") and value:
            if kind == "http" and not value.startswith(("http://", "https://")):
                raise UsageError(f"--health {spec}: not an http:// or https:// URL")
            if kind == "tcp" and split_host_port(value) is None:
                raise UsageError(f"--health {spec}: expected tcp=HOST:PORT")
            return cls(kind, value)
        raise UsageError(
            f"bad --health {spec!r}", "use agent, http=URL, tcp=HOST:PORT or command=CMD"
        )

    def params(self) -> dict[str, str]:
        return {
            "agent": {"health_agent_ping": "true"},
            "http": {"health_http": self.value},
            "tcp": {"health_tcp": self.value},
            "command": {"health_command": self.value},
        }[self.kind]


def agent_of(prim: ET.Element) -> str:
    provider = prim.get("provider")
    return ":".join(x for x in (prim.get("class"), provider, prim.get("type")) if x)


def guest_primitives(cib: ET.Element) -> dict[str, ET.Element]:
    return {rid: p for rid, p in pcmk.primitives(cib).items() if agent_of(p) in AGENTS}


def guest_state(r: pcmk.ResourceState | None) -> str:
    """One word for a guest resource: running, stopped, failed, unknown, or its role
    in lower case while it changes (migrating, starting, stopping...)."""
    if r is None:
        return "unknown"
    if r.failed:
        return "failed"
    if r.active and r.nodes:
        return "running" if r.role == "Started" else r.role.lower()
    return "stopped"


def require_guest(cib: ET.Element, name: str) -> ET.Element:
    prims = guest_primitives(cib)
    if name not in prims:
        known = ", ".join(sorted(prims)) or "none yet"
        raise UsageError(f"unknown guest {name!r}", f"guests: {known}")
    return prims[name]


def require_host(cib: ET.Element, host: str) -> None:
    nodes = pcmk.node_names(cib)
    if host not in nodes:
        raise UsageError(f"unknown host {host!r}", f"cluster hosts: {', '.join(nodes)}")


def domain_name_of(xml_file: Path) -> str:
    """The <name> of the domain XML in xml_file; UsageError naming what is wrong."""
    try:
        text = xml_file.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {xml_file}: {exc.strerror}") from exc
    try:
        return parse_domain(text, str(xml_file))[0]
    except DomainXMLError as exc:
        raise UsageError(str(exc)) from exc


def add(
    name: str,
    xml_file: Path,
    *,
    dc: str | None,
    health: list[HealthCheck],
    remote_node: bool,
    transport: str,
    wait_s: float,
    say: Callable[[str], None],
) -> str:
    """Create the resource (disabled), place it, enable it; return the host it runs on."""
    if not NAME_RE.match(name):
        raise UsageError(f"bad guest name {name!r}", "use letters, digits, '_', '.', '-'")
    xml_file = xml_file.resolve()
    dom = domain_name_of(xml_file)
    if dom != name:
        raise UsageError(
            f"the domain in {xml_file} is named {dom!r}, not {name!r}",
            "give the guest the name of its domain",
        )
    cib = pcmk.query_cib()
    if name in pcmk.primitives(cib):
        raise UsageError(f"a resource named {name!r} exists already")
    if dc is not None:
        datacentre.require(cib, dc)
    params = {
        "config": str(xml_file),
        "hypervisor": "qemu:///system",
        "migration_transport": transport,
    }
    for h in health:
        params.update(h.params())
    argv = [
        "resource",
        "create",
        name,
        "ocf:kvmha:Guest",
        *(f"{k}={v}" for k, v in params.items()),
        "meta",
        "allow-migrate=true",
    ]
    if remote_node:
        argv.append(f"remote-node={name}")
    argv += [
        "op",
        "start",
        "timeout=120s",
        "stop",
        "timeout=120s",
        "monitor",
        "interval=10s",
        "timeout=30s",
    ]
    if health:
        argv += ["monitor", "interval=30s", "timeout=40s", "OCF_CHECK_LEVEL=10"]
    argv += ["migrate_to", "timeout=120s", "migrate_from", "timeout=90s", "--disabled"]
    say(f"creating {name} (ocf:kvmha:Guest)")
    pcmk.pcs(*argv)
    if dc is not None:
        say(f"placing {name} in data centre {dc}")
        datacentre.place_guest(pcmk.query_cib(), name, dc)
    pcmk.pcs("resource", "enable", name)
    say(f"starting {name}")
    return wait_running(name, None, wait_s)


def wait_running(name: str, on: str | None, wait_s: float) -> str:
    deadline = time.monotonic() + wait_s
    while True:
        st = pcmk.cluster_state()
        host = st.running_on(name)
        if host and (on is None or host == on):
            return host
        r = st.resources.get(name)
        if r is not None and r.failed:
            raise KvmhaError(f"{name} failed to start", f"see 'pcs resource status {name}'")
        if time.monotonic() > deadline:
            raise KvmhaError(
                f"{name} is not running after {wait_s:.0f} s",
                f"see 'crm_mon -1 --include=failures' and 'pcs resource status {name}'",
            )
        time.sleep(0.5)


def remove(name: str) -> None:
    require_guest(pcmk.query_cib(), name)
    pcmk.pcs("resource", "delete", name, timeout=300)


def set_enabled(name: str, enabled: bool, wait_s: float) -> None:
    require_guest(pcmk.query_cib(), name)
    pcmk.pcs(
        "resource",
        "enable" if enabled else "disable",
        name,
        f"--wait={int(wait_s)}",
        timeout=wait_s + 30,
    )
