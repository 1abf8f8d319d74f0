"""``kvmha doctor`` the command: options, exit codes, JSON, table (no daemons needed)."""

from __future__ import annotations

import json
import subprocess

import click
import pytest
from click.testing import CliRunner

from kvmha.process import module_argv
from kvmha.tools.doctor_cli import doctor, render

DOC = {
    "host": "host1",
    "services_from": "processes",
    "findings": [
        {
            "severity": "ok",
            "code": "libvirt",
            "message": "libvirt answers",
            "fix": "",
            "check": "libvirt",
        },
        {
            "severity": "error",
            "code": "stonith-disabled",
            "message": "stonith-enabled is false: a failed host is never fenced, so its guests "
            "are not recovered safely (or run twice)",
            "fix": "pcs property set stonith-enabled=true",
            "check": "cluster",
        },
        {
            "severity": "warning",
            "code": "timesync-missing",
            "message": "no time sync service runs",
            "fix": "install and enable chrony",
            "check": "timesync",
        },
    ],
    "summary": {"ok": 1, "warning": 1, "error": 1},
}


@pytest.mark.parametrize(
    "args",
    [
        ["--skip", "nosuch"],
        ["--only", "nosuch"],
        ["--timeout", "0"],
        ["--timeout", "abc"],
        ["--bogus"],
        ["extra-argument"],
        ["--skip", "keys", "--only", "libvirt"],
    ],
)
def test_bad_input_is_one_line_and_exit_3(args: list[str]) -> None:
    r = CliRunner().invoke(doctor, args)
    assert r.exit_code == 3, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("kvmha: error: "), r.output
    assert len(lines) <= 2 and (len(lines) == 1 or lines[1].startswith("kvmha: fix: "))


def test_bad_input_as_a_separate_process() -> None:
    r = subprocess.run(
        [*module_argv("kvmha.tools.doctor_cli"), "--skip", "nosuch"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 3
    assert r.stdout == ""
    assert r.stderr.splitlines()[0].startswith("kvmha: error: doctor: invalid value for '--skip'")


def test_help_documents_the_exit_codes() -> None:
    r = CliRunner().invoke(doctor, ["--help"])
    assert r.exit_code == 0
    assert "0 all ok, 1 warnings, 2 errors, 3 doctor could not run" in r.output
    assert "--bus-address" not in r.output  # for tests, hidden


def test_json_and_exit_code_of_one_check() -> None:
    # the keys check runs on any machine; its verdict decides the exit code
    r = CliRunner().invoke(doctor, ["--only", "keys", "--json"])
    doc = json.loads(r.output)
    assert set(doc) >= {"host", "findings", "summary"}
    assert {f["check"] for f in doc["findings"]} == {"keys"}
    worst = 2 if doc["summary"]["error"] else 1 if doc["summary"]["warning"] else 0
    assert r.exit_code == worst


def test_table_when_piped_is_plain() -> None:
    r = CliRunner().invoke(doctor, ["--only", "keys"])
    assert r.exit_code in (0, 1, 2)
    assert "\x1b[" not in r.output
    assert r.output.splitlines()[1].split() == ["CHECK", "STATUS", "FINDING"]


def test_render_colours_and_wraps_on_a_terminal() -> None:
    lines = render(DOC, 80)
    text = "\n".join(lines)
    assert "\x1b[31m" in text  # errors red
    plain = click.unstyle(text).splitlines()
    assert all(len(x) <= 80 for x in plain), plain
    assert any(x.strip() == "fix: pcs property set stonith-enabled=true" for x in plain)
    assert plain[-1] == "1 ok, 1 warning(s), 1 error(s)"


def test_render_piped_keeps_one_line_per_finding() -> None:
    plain = click.unstyle("\n".join(render(DOC, None))).splitlines()
    assert len(plain) == 2 + 3 + 2 + 1  # title, header, findings, their fixes, summary
    assert plain[3].startswith("cluster  ERROR   stonith-enabled is false: a failed host")
