"""kvmha/events.py: the timeline from Pacemaker's fencing and operation history and the
fence listeners' audit log."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import cluster_fixture
from support.schema import validate

from kvmha import events
from kvmha.pcmk import FenceEvent
from kvmha.tools import events_cli
from kvmha.tools.cli import main

paper_cluster = cluster_fixture.paper_cluster

T0 = 1796166000  # 2026-12-01T23:00:00Z


def op(rid: str, name: str, rc: int, expected: int, t: int, **extra: str) -> str:
    attrs = {
        "id": f"{rid}_last_0",
        "operation_key": f"{rid}_{name}_0",
        "operation": name,
        "transition-key": f"3:7:{expected}:0d6d4b4c-5c8d-4a6e-9c1e-3c1b2a9d8e7f",
        "rc-code": str(rc),
        "op-status": extra.pop("op_status", "0"),
        "interval": extra.pop("interval", "0"),
        "last-rc-change": str(t),
        **extra,
    }
    return "<lrm_rsc_op " + " ".join(f'{k}="{v}"' for k, v in attrs.items()) + "/>"


def cib(*nodes: tuple[str, str, list[str]]) -> ET.Element:
    states = "".join(
        f'<node_state uname="{host}"><lrm><lrm_resources>'
        f'<lrm_resource id="{rid}" type="Guest" class="ocf" provider="kvmha">{"".join(ops)}'
        "</lrm_resource></lrm_resources></lrm></node_state>"
        for host, rid, ops in nodes
    )
    return ET.fromstring(f"<cib><configuration/><status>{states}</status></cib>")


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("1796166000", T0),
        ("2026-12-01 23:00:00Z", T0),
        ("2026-12-01T23:00:00+0000", T0),
        ("2026-12-02T00:00:00+01:00", T0),
        ("2026-12-01 23:00:00.123456Z", T0),
    ],
)
def test_times_in_pacemakers_and_the_audit_logs_formats(text: str, epoch: int) -> None:
    assert events.parse_time(text) == epoch


@pytest.mark.parametrize("text", ["", "yesterday", "2026-12-01", "12:00:00", None])
def test_a_time_that_cannot_be_read_gives_no_event_time(text: str | None) -> None:
    assert events.parse_time(text) is None


def test_fencing_history_says_who_was_fenced_by_whom() -> None:
    got = events.fencing_events(
        [
            FenceEvent("host2", "reboot", "success", "host1", "2026-12-01 23:00:04Z"),
            FenceEvent("host3", "off", "failed", "host1", "2026-12-01 23:00:09Z"),
            FenceEvent("host3", "off", "pending", "", ""),  # not completed: no time, no event
        ]
    )
    assert [(e["kind"], e["host"], e["message"]) for e in got] == [
        ("fence", "host2", "host2 fenced (reboot) by host1"),
        ("fence-failed", "host3", "fencing of host3 (off) failed"),
    ]
    assert got[0]["time"] == "2026-12-01T23:00:04Z" and got[0]["source"] == "fencing-history"


def test_a_finished_operation_is_dated_when_it_finished() -> None:
    c = cib(("host3", "guest1", [op("guest1", "start", 0, 0, T0, **{"exec-time": "15250"})]))
    assert [e["epoch"] for e in events.operation_events(c, ["guest1"])] == [T0 + 15.25]


def test_operation_history_gives_starts_stops_migrations_and_failures() -> None:
    c = cib(
        ("host3", "guest1", [op("guest1", "start", 0, 0, T0 + 9)]),
        ("host1", "guest2", [op("guest2", "migrate_to", 0, 0, T0 + 20)]),
        ("host3", "guest2", [op("guest2", "migrate_from", 0, 0, T0 + 22)]),
        ("host1", "guest3", [op("guest3", "stop", 0, 0, T0 + 30)]),
        (
            "host1",
            "guest4",
            [op("guest4", "monitor", 1, 0, T0 + 40, interval="10000", **{"exit-reason": "qga"})],
        ),
        ("host2", "guest4", [op("guest4", "start", 1, 0, T0 + 41, op_status="2")]),
    )
    got = events.timeline(events.operation_events(c, ["guest1", "guest2", "guest3", "guest4"]))
    assert [e["message"] for e in got] == [
        "guest4: start failed on host2: timed out",
        "guest4: monitor failed on host1: qga",
        "guest3 stopped on host1",
        "guest2 live-migrated to host3",
        "guest2 live-migrated away from host1",
        "guest1 started on host3",
    ]
    assert [e["epoch"] for e in got] == sorted((e["epoch"] for e in got), reverse=True)


def test_a_probe_that_finds_a_guest_stopped_is_no_event_but_a_surprise_is() -> None:
    c = cib(
        ("host1", "guest1", [op("guest1", "monitor", 7, 7, T0)]),  # expected: not running
        ("host2", "guest1", [op("guest1", "monitor", 0, 7, T0 + 1)]),  # runs where it should not
    )
    got = events.operation_events(c, ["guest1"])
    assert [e["message"] for e in got] == ["guest1: probe failed on host2: ok"]


def test_an_operation_in_progress_is_pending_not_failed() -> None:
    c = cib(
        ("host3", "guest4", [op("guest4", "start", 193, 0, T0, op_status="-1")]),
        (
            "host2",
            "guest4",
            [op("guest4", "monitor", 193, 0, T0, op_status="-1", interval="10000")],
        ),
    )
    got = events.operation_events(c, ["guest4"])
    assert [(e["kind"], e["message"]) for e in got] == [
        ("pending", "guest4: start in progress on host3")
    ]


def test_only_guests_count_not_other_resources() -> None:
    c = cib(("host1", "lab-power", [op("lab-power", "start", 0, 0, T0)]))
    assert events.operation_events(c, ["guest1"]) == []


def test_audit_log_gives_fence_requests_and_refusals_not_lookups() -> None:
    lines = [
        json.dumps(r)
        for r in (
            {
                "time": "2026-12-01T23:00:05+0000",
                "listener": "host1",
                "key": "gc1",
                "action": "off",
                "plug": "guest2",
                "result": "off",
            },
            {"time": "2026-12-01T23:00:06+0000", "listener": "host1", "action": "status"},
            {
                "time": "2026-12-01T23:00:07+0000",
                "listener": "host3",
                "peer": "10.77.0.9",
                "result": "refused",
                "detail": "unknown key",
            },
        )
    ] + ["not json", "[1, 2]"]
    got = events.audit_events(lines)
    assert [e["message"] for e in got] == [
        "fence request off guest2 from gc1 at host1: off",
        "fence request request from 10.77.0.9 at host3: refused (unknown key)",
    ]
    assert got[0]["guest"] == "guest2" and got[0]["kind"] == "fence-request"


def test_timeline_is_newest_first_and_bounded() -> None:
    many = [events.event(T0 + i, "start", str(i), "x") for i in range(10)]
    got = events.timeline(many[:5], many[5:], limit=3)
    assert [e["message"] for e in got] == ["9", "8", "7"]


def test_kvmha_events_json_is_a_document_its_schema_describes(
    paper_cluster: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    audit = tmp_path / "fence-audit.log"
    audit.write_text(
        json.dumps(
            {
                "time": "2026-12-01T23:00:05+0000",
                "listener": "host1",
                "key": "gc1",
                "action": "off",
                "plug": "guest2",
                "result": "off",
            }
        )
        + "\n"
    )
    monkeypatch.setattr(events_cli, "audit_log_path", lambda: str(audit))
    r = CliRunner(mix_stderr=False).invoke(main, ["events", "--json"], prog_name="kvmha")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "kvmha.events.v1"
    validate(doc)
    assert any(e["kind"] == "fence-request" for e in doc["events"])
    text = CliRunner(mix_stderr=False).invoke(main, ["events"], prog_name="kvmha")
    assert text.exit_code == 0 and "fence request off guest2" in text.stdout


def test_the_audit_log_path_comes_from_the_listeners_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "listener.conf"
    conf.write_text("[listener]\nhost = host1\naudit_log = /srv/audit.log\n")
    assert events_cli.audit_log_path(str(conf)) == "/srv/audit.log"
    assert events_cli.audit_log_path(str(tmp_path / "none.conf")) == events_cli.DEFAULT_AUDIT_LOG
    assert events_cli.audit_tail(str(tmp_path / "missing.log")) == []
