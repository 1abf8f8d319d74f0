"""Data centres: named groups of hosts and guests (dev, qa, ...) that keep apart.

They live in the cluster configuration itself, so every host sees them and they survive
any host:
- the list of data centres: a cluster property set ``kvmha-datacentres`` with one nvpair
  per data centre (``kvmha-dc-NAME``);
- a host's data centre: the permanent node attribute ``kvmha-dc``;
- a guest's data centre: the meta attribute ``kvmha-dc`` of its resource, plus a location
  constraint ``kvmha-dc-GUEST`` that bans it (-INFINITY) from every host whose ``kvmha-dc``
  attribute is missing or different. Pacemaker enforces it, also after a host failure:
  a guest whose data centre has no host left stays stopped.
Fence key scopes can name a data centre (the listener reads the same meta attribute).
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

from kvmha import pcmk
from kvmha.errors import UsageError

ATTR = "kvmha-dc"
PROPERTY_SET = "kvmha-datacentres"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


@dataclasses.dataclass(frozen=True)
class DataCentre:
    name: str
    hosts: tuple[str, ...]
    guests: tuple[str, ...]


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"bad data centre name {name!r}",
            "use 1-31 lower-case letters, digits and '-', starting with a letter",
        )
    return name


def names(cib: ET.Element) -> list[str]:
    out = []
    for ps in cib.iterfind("configuration/crm_config/cluster_property_set"):
        if ps.get("id") == PROPERTY_SET:
            out += [nv.get("value", "") for nv in ps.iterfind("nvpair")]
    return sorted(out)


def require(cib: ET.Element, name: str) -> None:
    known = names(cib)
    if name not in known:
        raise UsageError(
            f"unknown data centre {name!r}",
            f"known: {', '.join(known)}" if known else "create it with 'kvmha dc create'",
        )


def guest_dc(prim: ET.Element) -> str | None:
    return pcmk.nvpairs(prim, "meta_attributes").get(ATTR)


def all_dcs(cib: ET.Element) -> list[DataCentre]:
    prims = pcmk.primitives(cib)
    out = []
    for name in names(cib):
        hosts = tuple(h for h in pcmk.node_names(cib) if pcmk.node_attribute(cib, h, ATTR) == name)
        guests = tuple(sorted(rid for rid, p in prims.items() if guest_dc(p) == name))
        out.append(DataCentre(name, hosts, guests))
    return out


def create(name: str) -> None:
    check_name(name)
    if name in names(pcmk.query_cib()):
        raise UsageError(f"data centre {name!r} exists already")
    pcmk.crm_attribute(
        "--type",
        "crm_config",
        "--set-name",
        PROPERTY_SET,
        "--name",
        f"{ATTR}-{name}",
        "--update",
        name,
    )


def add_host(name: str, host: str) -> str | None:
    """Put host into data centre name; returns the data centre it left, if any."""
    cib = pcmk.query_cib()
    require(cib, name)
    nodes = pcmk.node_names(cib)
    if host not in nodes:
        raise UsageError(f"unknown host {host!r}", f"cluster hosts: {', '.join(nodes)}")
    before = pcmk.node_attribute(cib, host, ATTR)
    pcmk.crm_attribute("--type", "nodes", "--node", host, "--name", ATTR, "--update", name)
    return before if before != name else None


def placement_constraint(guest: str, name: str) -> str:
    """Ban guest from every host that is not in data centre name."""
    cid = f"{ATTR}-{guest}"
    return (
        f'<rsc_location id={quoteattr(cid)} rsc={quoteattr(guest)}>'
        f'<rule id={quoteattr(cid + "-rule")} score="-INFINITY" boolean-op="or">'
        f'<expression id={quoteattr(cid + "-undefined")} attribute="{ATTR}" '
        'operation="not_defined"/>'
        f'<expression id={quoteattr(cid + "-other")} attribute="{ATTR}" operation="ne" '
        f'value={quoteattr(name)}/>'
        "</rule></rsc_location>"
    )


def place_guest(cib: ET.Element, guest: str, name: str) -> None:
    """Put an existing guest resource into data centre name (meta attribute + constraint)."""
    require(cib, name)
    pcmk.crm_resource(
        "--resource", guest, "--meta", "--set-parameter", ATTR, "--parameter-value", name
    )
    cid = f"{ATTR}-{guest}"
    if cib.find(f".//rsc_location[@id='{cid}']") is not None:
        pcmk.cib_delete(f'<rsc_location id="{cid}"/>')
    pcmk.cib_create("constraints", placement_constraint(guest, name))
