"""Admission control and guest placement settings, applied to the live cluster.

A change that could cost availability (a new guest, a start, a priority or affinity
rule) is first applied to a copy of the live CIB and handed to ``kvmha.plan``
(crm_simulate); it is written only when, afterwards, every HA guest runs and the cluster
survives the loss of any ``tolerate`` hosts. ``force`` writes it anyway and records the
override in the guest's meta attribute ``kvmha-admission-override`` and in syslog.
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from kvmha import pcmk, placement, plan
from kvmha.errors import KvmhaError, UsageError

# Damping defaults for new guests: restart in place up to 3 times, then move (the fail
# count bans the host), and forget failures after 10 minutes.
MIGRATION_THRESHOLD = "3"
FAILURE_TIMEOUT = "10min"


class AdmissionRefused(KvmhaError):
    exit_code = 1


@dataclasses.dataclass
class Settings:
    priority: Optional[str] = None
    after: tuple[str, ...] = ()
    no_after: tuple[str, ...] = ()
    apart_from: tuple[str, ...] = ()
    together_with: tuple[str, ...] = ()
    no_affinity: tuple[str, ...] = ()
    soft: bool = False

    def changes(self, cib: ET.Element, guest: str) -> list[placement.Change]:
        out: list[placement.Change] = []
        work = ET.fromstring(ET.tostring(cib))

        def add(cs: list[placement.Change]) -> None:
            placement.apply_copy(work, cs)  # later checks see earlier changes
            out.extend(cs)

        if self.priority:
            add(placement.priority_changes(work, guest, self.priority))
        for dep in self.no_after:
            add(placement.no_after_changes(work, guest, dep))
        for dep in self.after:
            add(placement.after_changes(work, guest, dep))
        for other in self.no_affinity:
            add(placement.no_affinity_changes(work, guest, other))
        for other in self.apart_from:
            add(placement.affinity_changes(work, guest, other, together=False, hard=not self.soft))
        for other in self.together_with:
            add(placement.affinity_changes(work, guest, other, together=True, hard=not self.soft))
        return out


def settings_from(opts: dict[str, object]) -> tuple[Settings, int, bool]:
    """(Settings, tolerate, force) from the CLI's placement options."""

    def names(key: str) -> tuple[str, ...]:
        v = opts.get(key) or ()
        return tuple(v) if isinstance(v, (tuple, list)) else ()

    prio = opts.get("priority")
    s = Settings(
        priority=prio if isinstance(prio, str) else None,
        after=names("after"),
        apart_from=names("apart_from"),
        together_with=names("together_with"),
        soft=bool(opts.get("soft")),
    )
    tolerate = opts.get("tolerate", 1)
    return s, tolerate if isinstance(tolerate, int) else 1, bool(opts.get("force"))


def check(
    guest: str,
    changes: list[placement.Change],
    tolerate: int,
    force: bool,
    what: str,
    say: Callable[[str], None],
) -> None:
    """Refuse (AdmissionRefused, with the plan) unless force; record a forced override."""
    ok, reason, p = plan.admission(plan.live_cib_text(), changes, guest, tolerate)
    if ok:
        return
    if not force:
        for line in plan.text_report(p):
            say(f"plan: {line}")
        raise AdmissionRefused(
            f"refused: {reason}",
            "add capacity, change the guest's placement, or use --force to accept the risk",
        )
    say(f"warning: {reason}; --force: going ahead, the override is recorded")
    plan.record_override(guest, what, reason)


def add_hook(
    xml_file: Path,
    settings: Settings,
    tolerate: int,
    force: bool,
    say: Callable[[str], None],
) -> Callable[[str], None]:
    """For guests.add: called with the disabled resource created; writes utilization,
    damping, priority and rules, after admission control. On refusal the (never started)
    resource is deleted again, so nothing is changed."""

    def hook(name: str) -> None:
        try:
            cpu, mem = placement.domain_size(xml_file)
            cib = pcmk.query_cib()
            changes = placement.guest_utilization_changes(name, cpu, mem)
            changes += [
                placement.SetMeta(name, "migration-threshold", MIGRATION_THRESHOLD),
                placement.SetMeta(name, "failure-timeout", FAILURE_TIMEOUT),
            ]
            s = dataclasses.replace(settings, priority=settings.priority or "medium")
            changes += s.changes(cib, name)
            enable: list[placement.Change] = [placement.SetMeta(name, "target-role", None)]
            check(name, changes + enable, tolerate, force, "guest add", say)
            placement.apply_live(changes)
        except BaseException:
            pcmk.pcs("resource", "delete", name, "--force", timeout=120)
            raise

    return hook


def check_start(name: str, tolerate: int, force: bool, say: Callable[[str], None]) -> None:
    from kvmha.guests import require_guest

    require_guest(pcmk.query_cib(), name)
    check(name, [placement.SetMeta(name, "target-role", None)], tolerate, force, "start", say)


def apply_settings(
    name: str, settings: Settings, tolerate: int, force: bool, say: Callable[[str], None]
) -> list[placement.Change]:
    from kvmha.guests import require_guest

    cib = pcmk.query_cib()
    require_guest(cib, name)
    changes = settings.changes(cib, name)
    if not changes:
        raise UsageError("nothing to change", "give --priority, --after, --apart-from, ...")
    check(name, changes, tolerate, force, "guest set", say)
    placement.apply_live(changes)
    return changes
