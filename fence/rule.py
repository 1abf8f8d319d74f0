"""The rule for saying "off": a pure function of what the hosts and the host cluster said.

The listener gathers ``Facts`` (every member host's answer or silence, the records of
where the target was last seen running and when each host was last heard from, the host
cluster's state), and this module alone decides (docs/fence.md, "The rule for success"):

``off`` (and the off half of ``reboot``) succeeds only when, for every copy of the target,
its host's own libvirt confirms it off, or its host is recorded by the host cluster as
fenced *after* the copy was last seen running there (and is cleanly offline since); every
member host of the host cluster answered or is fenced in that sense; and, for a guest the
host cluster manages, the cluster shows no active instance. A name that maps to more than
one UUID is ambiguous unless the request names the UUID. Otherwise the answer is an error
naming the host that could not be confirmed.

"Last seen" for a silent host is the latest of: any sighting of the target there, any
time any listener heard from that host, and (when nobody has a record) the time this
listener started -- it cannot know what ran before. A fence record only counts when it
completed more than ``CLOCK_SKEW`` seconds after that moment.

Nothing here does I/O; the model-based and exhaustive tests drive it directly and
through the real listener.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

from kvmha.fence.cluster import ManagedGuest, Status

CLOCK_SKEW = 1.0  # seconds the hosts' clocks may disagree (NTP keeps them far closer)
UUID_RE = re.compile(r"[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}\Z")
Json = dict[str, Any]


def looks_like_uuid(plug: str) -> bool:
    return bool(UUID_RE.match(plug))


def norm_uuid(u: str) -> str:
    """A UUID in libvirt's form: lower case, with dashes."""
    h = u.replace("-", "").lower()
    if len(h) != 32:
        return u.lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclasses.dataclass(frozen=True)
class Copy:
    """A domain matching the plug, as its host's libvirt reported it just now."""

    host: str
    name: str
    uuid: str
    active: bool  # running, paused, migrating...: anything libvirt calls active
    state: str = ""


@dataclasses.dataclass(frozen=True)
class Sighting:
    """A record: the domain (name, uuid) was seen running on host at time (Unix)."""

    host: str
    name: str
    uuid: str
    time: float


@dataclasses.dataclass(frozen=True)
class Facts:
    plug: str
    hosts: tuple[str, ...]  # every member host: the cluster's nodes, the peers, this host
    answered: dict[str, tuple[Copy, ...]]  # host -> the copies its libvirt has (maybe none)
    silent: dict[str, str]  # host -> why it could not be asked
    sightings: tuple[Sighting, ...] = ()  # records matching the plug, from every listener
    heard: dict[str, float] = dataclasses.field(default_factory=dict)  # host -> last answer
    floor: float = 0.0  # this listener's start: it knows nothing before
    status: Optional[Status] = None  # the host cluster's state (None: could not be read)
    use_cluster: bool = True

    @property
    def by_uuid(self) -> bool:
        return looks_like_uuid(self.plug)

    def matches(self, name: str, uuid: str) -> bool:
        if self.by_uuid:
            return norm_uuid(uuid) == norm_uuid(self.plug)
        return name == self.plug


@dataclasses.dataclass(frozen=True)
class Identity:
    name: str
    uuid: str  # normalized; "" when only the host cluster knows the guest (no XML)
    copies: tuple[Copy, ...]  # the copies of exactly this domain on answering hosts
    known: bool  # some host has it, a record saw it, or the host cluster manages it


def problem(code: str, message: str, **extra: Any) -> Json:
    return {"status": "error", "code": code, "message": message, **extra}


def identify(
    f: Facts, managed: Optional[ManagedGuest]
) -> tuple[Optional[Identity], Optional[Json]]:
    """Which domain the plug names, or an ambiguous-name problem."""
    copies = [c for cs in f.answered.values() for c in cs if f.matches(c.name, c.uuid)]
    seen = [s for s in f.sightings if f.matches(s.name, s.uuid)]
    where: dict[str, set[str]] = {}
    for c in copies:
        where.setdefault(norm_uuid(c.uuid), set()).add(c.host)
    for s in seen:
        where.setdefault(norm_uuid(s.uuid), set()).add(s.host + " (last seen)")
    if managed is not None and managed.uuid and not f.by_uuid:
        where.setdefault(norm_uuid(managed.uuid), set()).add("the host cluster")
    where.pop("", None)
    if len(where) > 1:
        parts = "; ".join(f"{u} on {', '.join(sorted(h))}" for u, h in sorted(where.items()))
        return None, problem(
            "ambiguous-name",
            f"{f.plug!r} names {len(where)} different domains: {parts}; "
            "fence by UUID (plug=UUID) or rename one",
            uuids=sorted(where),
        )
    if where:
        uuid = next(iter(where))
    elif f.by_uuid:
        uuid = norm_uuid(f.plug)
    else:
        uuid = ""
    mine = tuple(c for c in copies if not uuid or norm_uuid(c.uuid) == uuid)
    name = next((c.name for c in mine), "") or next((s.name for s in seen), "")
    if not name and managed is not None:
        name = managed.name
    if not name and not f.by_uuid:
        name = f.plug
    known = bool(mine or seen or managed is not None)
    return Identity(name, uuid, mine, known), None


def last_alive(f: Facts, ident: Identity, host: str) -> float:
    """The latest moment anything (the target included) may have run on host, as known."""
    times = [s.time for s in f.sightings if s.host == host and _same(ident, s.name, s.uuid)]
    if host in f.heard:
        times.append(f.heard[host])
    return max(times) if times else f.floor


def _same(ident: Identity, name: str, uuid: str) -> bool:
    return norm_uuid(uuid) == ident.uuid if ident.uuid else name == ident.name


def to_power_off(ident: Identity) -> list[str]:
    """The answering hosts whose libvirt has an active copy: every one of them is powered
    off (a live migration's source and destination both)."""
    return sorted({c.host for c in ident.copies if c.active})


def unconfirmed(f: Facts, ident: Identity, offs: dict[str, Optional[str]]) -> list[tuple[str, str]]:
    """(host, why) for every host that keeps 'off' from being the truth.

    offs: host -> None when its libvirt confirmed the copy off, else why not. An
    answering host with an active copy and no confirmed off is unconfirmed; so is a
    silent host not fenced after it was last alive.
    """
    out = []
    active = set(to_power_off(ident))
    for h in sorted(set(f.hosts) | set(f.answered) | set(f.silent)):
        if h in f.answered:
            if h in active and (h not in offs or offs[h] is not None):
                out.append(
                    (
                        h,
                        f"{h} did not confirm {ident.name or f.plug} off: "
                        f"{offs.get(h) or 'still active'}",
                    )
                )
            continue
        why = f.silent.get(h, "not asked")
        since = last_alive(f, ident, h)
        st = f.status
        if st is not None and st.fenced_after(h, since + CLOCK_SKEW):
            continue
        if st is None:
            detail = "the host cluster's state could not be read"
        elif st.nodes.get(h) is not None and st.nodes[h].online:
            detail = "the host cluster shows it online"
        elif st.nodes.get(h) is not None and st.nodes[h].unclean:
            detail = "the host cluster has not fenced it yet"
        elif h in st.fenced_at:
            detail = "its last fence record is older than the last time it was seen alive"
        else:
            detail = "the host cluster has no record of fencing it"
        out.append(
            (h, f"{h} does not answer ({why}) and is not recorded as fenced since ({detail})")
        )
    return out


def managed_active(st: Optional[Status], managed: Optional[ManagedGuest]) -> Optional[str]:
    """Why the host cluster does not show the managed guest stopped; None when it does."""
    if managed is None:
        return None
    if st is None:
        return f"the host cluster's state could not be read to check {managed.rid}"
    nodes = st.placement.get(managed.rid)
    if nodes:
        return f"the host cluster shows {managed.rid} active on {', '.join(nodes)}"
    return None


def judge(
    f: Facts,
    ident: Identity,
    managed: Optional[ManagedGuest],
    offs: dict[str, Optional[str]],
    status_after: Optional[Status],
) -> Json:
    """The answer to off (or to status, with offs empty): ok only under the rule."""
    bad = unconfirmed(f, ident, offs)
    if bad:  # first: a silent host may be where an "unknown" domain runs
        return problem(
            "host-unconfirmed" if any(h not in f.answered for h, _ in bad) else "off-failed",
            "; ".join(why for _, why in bad),
            hosts=[h for h, _ in bad],
        )
    if not ident.known:
        return problem(
            "unknown-domain",
            f"no host knows domain {f.plug!r} (every host answered, none has it, and no "
            "record shows it ever ran): check the plug",
        )
    why = managed_active(status_after, managed)
    if why:
        return problem("managed-active", why)
    return {"status": "ok", "state": "off"}
