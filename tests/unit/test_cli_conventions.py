"""The kvmha command keeps one set of conventions (issue #16 part 2), pinned here with
click's CliRunner and with the installed ``kvmha`` in a subprocess:
one-line usage errors with a fix, -h, the closest command for a typo, --json on every
report and change with a "schema" that docs/schemas/ describes, a JSON error object,
colour only where it belongs, completion of names, --verbose."""

from __future__ import annotations

import io
import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from support import cluster_fixture
from support.schema import SCHEMAS, validate

from kvmha.tools import output
from kvmha.tools.cli import main

paper_cluster = cluster_fixture.paper_cluster
KVMHA = "/usr/local/bin/kvmha" if Path("/usr/local/bin/kvmha").exists() else "kvmha"


def kvmha(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(mix_stderr=False).invoke(main, list(args), env=env, prog_name="kvmha")


def two_lines(r: Result) -> tuple[str, str]:
    lines = r.stderr.splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith("kvmha: error: ") and lines[1].startswith("kvmha: fix: "), lines
    return lines[0], lines[1]


# ---- usage errors: one line and a fix, exit 2 -------------------------------------------
def test_unknown_command_suggests_the_closest() -> None:
    r = kvmha("gest", "list")
    assert r.exit_code == 2
    err, fix = two_lines(r)
    assert err == "kvmha: error: unknown command 'gest' for 'kvmha'"
    assert fix == "kvmha: fix: did you mean 'kvmha guest'?"


def test_unknown_verb_suggests_the_closest_in_its_group() -> None:
    r = kvmha("dc", "shwo", "qa")
    assert r.exit_code == 2
    assert two_lines(r)[1] == "kvmha: fix: did you mean 'kvmha dc show'?"


def test_unknown_command_without_a_near_one_points_to_help() -> None:
    r = kvmha("zzzzzz")
    assert two_lines(r)[1] == "kvmha: fix: see 'kvmha --help'"


def test_missing_argument_is_one_line_with_the_usage() -> None:
    r = kvmha("guest", "migrate", "guest1")
    assert r.exit_code == 2
    err, fix = two_lines(r)
    assert err == "kvmha: error: guest migrate: missing argument 'HOST'"
    assert "kvmha guest migrate [OPTIONS] NAME HOST" in fix
    assert "Usage:" not in r.stderr + r.stdout


def test_bad_option_value_is_one_line() -> None:
    r = kvmha("guest", "start", "guest1", "--wait", "0")
    assert r.exit_code == 2
    err, _ = two_lines(r)
    assert "invalid value for '--wait'" in err


def test_unknown_option_is_one_line_and_says_the_near_option() -> None:
    r = kvmha("guest", "list", "--jsn")
    assert r.exit_code == 2
    err, _ = two_lines(r)
    assert "--jsn" in err and "--json" in err


def test_doctor_usage_errors_keep_exit_3() -> None:
    r = kvmha("doctor", "--only", "nosuch")
    assert r.exit_code == 3
    two_lines(r)


@pytest.mark.parametrize(
    "args", [["-h"], ["guest", "-h"], ["guest", "add", "-h"], ["dc", "list", "-h"]]
)
def test_dash_h_is_help(args: list[str]) -> None:
    r = kvmha(*args)
    assert r.exit_code == 0 and r.stdout.startswith("Usage: kvmha"), r.stdout + r.stderr


def test_installed_kvmha_prints_one_line_errors() -> None:
    r = subprocess.run([KVMHA, "gust"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "kvmha: error: unknown command 'gust' for 'kvmha'",
        "kvmha: fix: did you mean 'kvmha guest'?",
    ]


# ---- "DC" is a data centre only -----------------------------------------------------------
def test_status_spells_out_the_designated_controller(paper_cluster: None, monkeypatch: Any) -> None:
    from kvmha.tools import cluster_cli

    monkeypatch.setattr(cluster_cli, "network_warnings", lambda: [])
    r = kvmha("status")
    assert r.exit_code == 0, r.stderr
    assert "designated controller host1" in r.stdout
    header = next(x for x in r.stdout.splitlines() if x.startswith("HOST"))
    assert "DATA CENTRE" in header and " DC " not in f" {header} "


def test_lab_status_spells_out_the_designated_controller() -> None:
    text = Path(__file__).resolve().parents[2].joinpath("tools/lab/cli.py").read_text()
    assert "designated controller {st['designated_controller']" in text and "DC {" not in text
    assert 'st["designated_controller"] = st.pop("dc", None)' in text


# ---- --json: every document names its schema, and matches it ---------------------------
def _doc(r: Result) -> dict[str, Any]:
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    validate(doc)
    return doc


def test_status_json_matches_its_schema(paper_cluster: None, monkeypatch: Any) -> None:
    from kvmha.tools import cluster_cli

    warn = {"code": "net-warning", "message": "bridge br0: x", "fix": "run 'kvmha net check'"}
    monkeypatch.setattr(cluster_cli, "network_warnings", lambda: [warn])
    doc = _doc(kvmha("status", "--json"))
    assert doc["schema"] == "kvmha.status.v1"
    assert {h["name"] for h in doc["hosts"]} == {"host1", "host2", "host3"}
    assert warn in doc["warnings"]


def test_guest_and_dc_reports_match_their_schemas(paper_cluster: None) -> None:
    guests = _doc(kvmha("guest", "list", "--json"))
    assert [g["name"] for g in guests["guests"]] == ["guest1", "guest2", "guest3"]
    dcs = _doc(kvmha("dc", "list", "--json"))
    assert {d["name"]: d["hosts"] for d in dcs["data_centres"]} == {
        "dev": ["host1"],
        "qa": ["host3"],
    }
    qa = _doc(kvmha("dc", "show", "dev", "--json"))
    assert [g["name"] for g in qa["guests"]] == ["guest1"]


def test_changes_report_json_results(monkeypatch: Any, tmp_path: Path) -> None:
    from kvmha import datacentre, guests, livemigrate

    monkeypatch.setattr(guests, "add", lambda name, xml, **kw: "host2")
    monkeypatch.setattr(livemigrate, "migrate", lambda name, host, progress, wait: 3.14)
    monkeypatch.setattr(guests, "set_enabled", lambda *a: None)
    monkeypatch.setattr(datacentre, "add_host", lambda dc, host: "qa")
    xml = tmp_path / "g.xml"
    xml.write_text("<domain><name>guest9</name></domain>")
    added = _doc(kvmha("guest", "add", "guest9", "--xml", str(xml), "--json"))
    assert added == {
        "schema": "kvmha.result.v1",
        "action": "guest-add",
        "guest": "guest9",
        "host": "host2",
    }
    moved = _doc(kvmha("guest", "migrate", "guest9", "host3", "--json"))
    assert moved["host"] == "host3" and moved["seconds"] == 3.1
    assert _doc(kvmha("guest", "stop", "guest9", "--json"))["action"] == "guest-stop"
    assert _doc(kvmha("dc", "add-host", "dev", "host3", "--json"))["left"] == "qa"


def test_a_failure_under_json_is_an_error_document(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<network/>")
    r = kvmha("guest", "add", "guest9", "--xml", str(bad), "--json")
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    validate(doc)
    assert doc["error"]["exit_code"] == 2
    assert "is not a libvirt domain" in doc["error"]["message"]
    assert r.stderr.startswith("kvmha: error: ")


def test_a_usage_error_under_json_is_an_error_document() -> None:
    r = kvmha("guest", "start", "guest1", "--wait", "-5", "--json")
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    validate(doc)
    assert "--wait" in doc["error"]["message"]


def test_doctor_and_net_check_documents_match_their_schemas() -> None:
    from support.net_topo import bridged_bond

    from kvmha.netcfg.check import check_snapshot

    validate(output.document("net-check", check_snapshot(bridged_bond(0))))
    r = kvmha("doctor", "--only", "keys", "--json")
    assert r.exit_code in (0, 1, 2), r.stderr
    validate(json.loads(r.stdout))


def test_every_json_document_has_a_published_schema() -> None:
    """Every emit("NAME", ...) and document("NAME", ...) has docs/schemas/NAME.v1.json."""
    import re

    top = Path(__file__).resolve().parents[2]
    used = set()
    for f in [*top.glob("tools/*.py"), *top.glob("tools/lab/*.py")]:
        used |= set(re.findall(r'\b(?:emit|document)\(\s*"([a-z-]+)"', f.read_text()))
    used.add("doctor")
    for f in top.glob("kvmha/*.py"):  # documents built in the library, printed as they are
        text = f.read_text()
        assert not re.findall(r'"schema":\s*\d', text), f"{f.name}: a bare schema number"
        used |= set(re.findall(r'"kvmha\.([a-z-]+)\.v1"', text))
    assert {"plan", "host-evacuate", "host-return"} <= used
    assert used >= {"status", "guest-list", "result", "error", "lab-status"}
    missing = [u for u in sorted(used) if not (SCHEMAS / f"{u}.v1.json").exists()]
    assert missing == []
    for f in SCHEMAS.glob("*.json"):
        s = json.loads(f.read_text())
        assert s["properties"]["schema"]["const"] == f"kvmha.{f.stem}"


def test_lab_chaos_and_demo_take_json_file_and_json_means_stdout() -> None:
    from kvmha.tools.lab.cli import chaos, demo

    for cmd in (chaos, demo):
        opts = {o.name: o for o in cmd.params if isinstance(o, click.Option)}
        assert opts["as_json"].is_flag and opts["as_json"].opts == ["--json"]
        assert opts["json_file"].opts == ["--json-file"]


# ---- colour ------------------------------------------------------------------------------
class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "tty", "want"),
    [
        ({}, True, True),
        ({"NO_COLOR": "1"}, True, False),
        ({"NO_COLOR": ""}, True, True),  # no-color.org: set and not empty
        ({"TERM": "dumb"}, True, False),
        ({}, False, False),
    ],
)
def test_colour_honours_no_color_term_dumb_and_pipes(
    monkeypatch: Any, env: dict[str, str], tty: bool, want: bool
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    stream = Tty() if tty else io.StringIO()
    assert output.colour_enabled(stream) is want
    monkeypatch.setattr("sys.stdout", stream)
    assert ("\x1b[" in output.colour("failed")) is want


def test_doctor_table_has_no_colour_under_no_color(monkeypatch: Any) -> None:
    from kvmha.tools.doctor_cli import render

    doc = {
        "host": "h",
        "services_from": None,
        "summary": {"ok": 0, "warning": 0, "error": 1},
        "findings": [{"check": "c", "severity": "error", "message": "m", "fix": "f"}],
    }
    assert "\x1b[" in "".join(render(doc, 80))
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in "".join(render(doc, 80))


# ---- completion ----------------------------------------------------------------------------
def _complete(words: str, monkeypatch: Any) -> list[str]:
    env = {
        "_KVMHA_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    r = CliRunner().invoke(main, [], env=env, prog_name="kvmha")
    return [line.split(",", 1)[1] for line in r.output.splitlines() if "," in line]


def test_completion_completes_guests_hosts_and_data_centres(
    paper_cluster: None, monkeypatch: Any
) -> None:
    assert _complete("kvmha guest migrate gu", monkeypatch) == ["guest1", "guest2", "guest3"]
    assert _complete("kvmha guest migrate guest1 host", monkeypatch) == ["host1", "host2", "host3"]
    assert _complete("kvmha dc show ", monkeypatch) == ["dev", "qa"]
    assert _complete("kvmha guest add g --dc q", monkeypatch) == ["qa"]
    assert _complete("kvmha gu", monkeypatch) == ["guest"]


def test_completion_completes_key_names(tmp_path: Path, monkeypatch: Any) -> None:
    from kvmha.tools.complete import key_names

    keys = tmp_path / "keys"
    keys.mkdir()
    for n in ("web.key", "db.key", "README"):
        (keys / n).write_text("")
    conf = tmp_path / "listener.conf"
    conf.write_text(f"[listener]\nhost = host1\nkeys_dir = {keys}\n")
    monkeypatch.setenv("KVMHA_FENCE_CONFIG", str(conf))
    assert sorted(key_names()) == ["db", "web"]


def test_completion_without_a_cluster_completes_nothing(monkeypatch: Any) -> None:
    from kvmha import pcmk
    from kvmha.errors import KvmhaError

    def down() -> Any:
        raise KvmhaError("the cluster is not running on this host")

    monkeypatch.setattr(pcmk, "query_cib", down)
    assert _complete("kvmha guest start ", monkeypatch) == []


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_for_three_shells(shell: str) -> None:
    r = kvmha("completion", shell)
    assert r.exit_code == 0, r.stderr
    assert "_KVMHA_COMPLETE" in r.stdout and f"{shell}_complete" in r.stdout


# ---- --verbose -------------------------------------------------------------------------------
def test_verbose_shows_the_cluster_commands(monkeypatch: Any) -> None:
    """Installed kvmha: with -v each cluster tool is shown before it runs (here the cluster
    is not running, so the command fails after crm_mon answered)."""
    env = dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    r = subprocess.run(
        [KVMHA, "-v", "guest", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert "kvmha: running: crm_mon -1 --output-as=xml" in r.stderr, r.stderr
    quiet = subprocess.run(
        [KVMHA, "guest", "list"], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert "running:" not in quiet.stderr
    env["KVMHA_VERBOSE"] = "1"
    by_env = subprocess.run(
        [KVMHA, "guest", "list"], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert "kvmha: running: crm_mon" in by_env.stderr


def test_verbose_traces_through_process_run() -> None:
    from kvmha import process

    seen: list[str] = []
    process.set_trace(seen.append)
    try:
        process.run(["true", "a b"])
        process.trace("libvirt: open qemu:///system")
    finally:
        process.set_trace(None)
    assert seen == ["running: true 'a b'", "libvirt: open qemu:///system"]


# ---- man pages -------------------------------------------------------------------------------
def test_kvmha_1_has_examples_files_environment_and_an_exit_status_per_command() -> None:
    from kvmha.tools import manpage

    page = manpage.render("kvmha")
    for section in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "EXAMPLES",
        "SEE ALSO",
    ):
        assert f"\n.SH {section}\n" in page, section
    exit_part = page.split("\n.SH EXIT STATUS\n", 1)[1].split("\n.SH ", 1)[0]
    paths = [" ".join(p) for p, _c in manpage._commands(main, [])]
    assert {"guest add", "doctor", "net check", "lab exec", "fence key create"} <= set(paths)
    for path in paths:
        assert f".B kvmha {manpage._roff(path)}\n" in exit_part, path
    assert manpage._roff(manpage.EXIT_STATUS["doctor"]) in exit_part
    assert "NO_COLOR" in page and "KVMHA_VERBOSE" in page
    # every override names a real command
    assert set(manpage.EXIT_STATUS) <= set(paths)


def test_the_listener_and_fence_agent_pages() -> None:
    from kvmha.tools import manpage

    listener = manpage.render("kvmha-fence-listener")
    assert listener.startswith(".TH KVMHA\\-FENCE\\-LISTENER 8")
    assert "\\-\\-config" in listener and "\n.SH EXIT STATUS\n" in listener
    assert "/etc/kvmha/fence/listener.conf" in listener
    agent = manpage.render("fence_kvmha")
    assert agent.startswith(".TH") and "fence_kvmha" in agent


def test_installed_manpage_module_renders_every_page() -> None:
    for page in ("kvmha", "kvmha-fence-listener", "fence_kvmha"):
        r = subprocess.run(
            ["/usr/bin/python3", "-I", "-m", "kvmha.tools.manpage", page],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0 and r.stdout.startswith(".TH"), (page, r.stderr)


def test_status_shows_guest_nodes_and_what_runs_in_them(monkeypatch: Any) -> None:
    """guest1 is a Pacemaker Remote guest node (gnode1) running web: status lists gnode1
    under guest_nodes with web, never as a host, and web is no guest."""
    from kvmha import pcmk

    from .test_pcmk import GUEST_NODE

    mon = cluster_fixture.CRM_MON.read_text().replace("</nodes>", GUEST_NODE + "</nodes>", 1)
    mon = mon.replace(
        "</resources>",
        '<resource id="web" resource_agent="systemd:nginx" role="Started" active="true" '
        'orphaned="false" blocked="false" managed="true" failed="false" '
        'failure_ignored="false" nodes_running_on="1"><node name="gnode1" id="gnode1" '
        'cached="true"/></resource></resources>',
        1,
    )
    cib = cluster_fixture.CIB.replace(
        '<nvpair id="g1-am" name="allow-migrate" value="true"/>',
        '<nvpair id="g1-am" name="allow-migrate" value="true"/>'
        '<nvpair id="g1-rn" name="remote-node" value="gnode1"/>',
    ).replace("</nodes>", '<node id="gnode1" uname="gnode1" type="remote"/></nodes>')
    state = pcmk.parse_crm_mon(mon)
    monkeypatch.setattr(pcmk, "cluster_state", lambda: state)
    monkeypatch.setattr(pcmk, "query_cib", lambda: ET.fromstring(cib))
    doc = _doc(kvmha("status", "--json"))
    assert doc["guest_nodes"] == [
        {"name": "compute9", "guest": None, "state": "offline", "host": None, "resources": []},
        {
            "name": "gnode1",
            "guest": "guest1",
            "state": "online",
            "host": "host2",
            "resources": ["web"],
        },
    ]
    assert "gnode1" not in [h["name"] for h in doc["hosts"]]
    assert "web" not in [g["name"] for g in doc["guests"]]
    text = kvmha("status").stdout
    assert "GUEST NODE" in text and "gnode1" in text
