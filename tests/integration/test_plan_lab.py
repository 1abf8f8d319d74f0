"""Issue #14 in the 3-host lab: the plan matches what a power cut does, admission
control, restart priority, evacuation with bounded live migrations, freeze/thaw, and
bad input that changes nothing.

Every test leaves the shared lab as it found it (constraints, utilization, properties,
standby removed; faults.restore brings every host and guest back).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from support.schema import validate

from kvmha.tools.lab import faults, libvirtconf
from kvmha.tools.lab.lab import Lab

from .helpers import wait_fenced, wait_for

pytestmark = pytest.mark.lab
HOSTS = ("host1", "host2", "host3")
GUESTS = ("guest1", "guest2", "guest3", "guest4")


def on(lab: Lab) -> str:
    """A powered host that is online in the cluster, to run commands on."""
    st = lab.cluster_state()
    assert st is not None
    return next(h for h in HOSTS if lab.powered(h) and st.nodes.get(h) and st.nodes[h].online)


def kvmha(lab: Lab, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return lab.run_in(on(lab), ["kvmha", *args], timeout=timeout, check=False)


def ok(lab: Lab, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    r = kvmha(lab, *args, timeout=timeout)
    assert r.returncode == 0, f"kvmha {' '.join(args)}: {r.stderr}"
    return r


def sh(lab: Lab, *argv: str) -> str:
    return lab.run_in(on(lab), list(argv), timeout=120).stdout


def config(lab: Lab) -> str:
    return sh(lab, "cibadmin", "-Q", "-o", "configuration")


def where(lab: Lab) -> dict[str, str | None]:
    st = lab.cluster_state()
    assert st is not None
    return {g: st.running_on(g) for g in GUESTS}


def settle(lab: Lab, seconds: int = 240) -> None:
    lab.run_in(
        on(lab),
        ["crm_resource", "--wait", "--timeout", f"{seconds}s"],
        timeout=seconds + 20,
        check=False,
    )


AUTOSET = ("autoset_utilization_cpu", "autoset_utilization_hv_memory")


def set_util(lab: Lab, guest: str, cpu: int, mem: int) -> None:
    """Sizes that differ from the domain's own: the agent must not put its real size back
    at the next start (autoset_utilization_*, on by default as in VirtualDomain)."""
    for param in AUTOSET:
        sh(lab, "crm_resource", "-r", guest, "--set-parameter", param, "--parameter-value", "false")
    for k, v in (("cpu", cpu), ("hv_memory", mem)):
        sh(lab, "crm_resource", "-r", guest, "--utilization", "-p", k, "-v", str(v))


def layout(lab: Lab, want: dict[str, str]) -> None:
    for g, h in want.items():
        if where(lab)[g] != h:
            ok(lab, "guest", "migrate", g, h)


def clean(lab: Lab) -> None:
    """Remove everything these tests write, then bring the lab back whole."""
    faults.restore(lab)
    cib = ET.fromstring(sh(lab, "cibadmin", "-Q"))
    for c in cib.iterfind("configuration/constraints/*"):
        if c.get("id", "").startswith("kvmha-") and not c.get("id", "").startswith("kvmha-dc"):
            sh(lab, "cibadmin", "--delete", "--xml-text", f'<{c.tag} id="{c.get("id")}"/>')
    for u in cib.iter("utilization"):
        sh(lab, "cibadmin", "--delete", "--xml-text", f'<utilization id="{u.get("id")}"/>')
    for name in ("placement-strategy", "migration-limit", "maintenance-mode", "stonith-action"):
        sh(lab, "crm_attribute", "--type", "crm_config", "--name", name, "--delete")
    for h in HOSTS:
        for name in ("standby", "kvmha-evacuated"):
            sh(lab, "crm_attribute", "--type", "nodes", "--node", h, "--name", name, "--delete")
    for g in GUESTS:
        for name in ("priority", "kvmha-admission-override"):
            lab.run_in(on(lab), ["crm_resource", "-r", g, "--meta", "-d", name], check=False)
        for param in AUTOSET:
            lab.run_in(on(lab), ["crm_resource", "-r", g, "--delete-parameter", param], check=False)
    faults.restore(lab)


@pytest.fixture()
def lab(lab3: Lab) -> Iterator[Lab]:
    clean(lab3)
    yield lab3
    lab3.run_in(on(lab3), ["kvmha", "guest", "remove", "guest5"], timeout=300, check=False)
    clean(lab3)


def test_bad_input_is_one_line_and_changes_nothing(lab: Lab) -> None:
    before = config(lab)
    ok(lab, "guest", "set", "guest1", "--after", "guest2", "--tolerate", "0")
    after_rule = config(lab)
    assert after_rule != before and "kvmha-after-guest1-guest2" in after_rule
    cases = [
        (("guest", "set", "nope", "--priority", "high"), "unknown guest 'nope'"),
        (("guest", "set", "guest2", "--after", "guest1"), "circular --after"),
        (("guest", "set", "guest1", "--apart-from", "guest1"), "relative to itself"),
        (("plan", "--fail", "host9"), "unknown host 'host9'"),
        (("plan", "--tolerate", "3"), "too large"),
        (("host", "evacuate", "host9"), "unknown host 'host9'"),
        (("host", "evacuate", "host1", "--parallel", "0"), "out of range"),
    ]
    for args, text in cases:
        r = kvmha(lab, *args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        first = r.stderr.splitlines()[0]
        assert first.startswith("kvmha: error: ") and text in first, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert config(lab) == after_rule, f"{args} changed the configuration"
    # the last host that can run guests cannot be evacuated
    for h in ("host2", "host3"):
        sh(lab, "crm_attribute", "--type", "nodes", "--node", h, "--name", "standby", "-v", "on")
    frozen = config(lab)
    r = kvmha(lab, "host", "evacuate", "host1")
    assert r.returncode == 2 and "last host" in r.stderr, r.stderr
    assert config(lab) == frozen


def test_admission_refuses_a_guest_that_breaks_n1_and_force_records_it(lab: Lab) -> None:
    """Capacity 2 CPUs per host, four 1-CPU guests: N=1 holds; a fifth breaks it."""
    settle(lab)
    for h in HOSTS:
        ok(lab, "host", "capacity", h, "--cpu", "2", "--memory", "4096")
    for g in GUESTS:
        set_util(lab, g, 1, 128)
    settle(lab)
    assert json.loads(ok(lab, "plan", "--tolerate", "1", "--json").stdout)["ok"]
    cfg = lab.cfg
    xml = cfg.guests_dir / "guest5.xml"
    xml.write_text(
        libvirtconf.guest_domain_xml(
            cfg, "guest5", str(cfg.image_dir / "vmlinuz"), str(cfg.image_dir / "initrd.img")
        )
    )
    add = ("guest", "add", "guest5", "--xml", str(xml), "--transport", "tcp")
    r = kvmha(lab, *add)
    assert r.returncode == 1, r.stderr
    assert "could not survive the loss of 1 host" in r.stderr, r.stderr
    assert "plan: if " in r.stderr  # the plan comes with the refusal
    assert "guest5" not in sh(lab, "cibadmin", "-Q", "-o", "resources")  # nothing left
    r = ok(lab, *add, "--force")
    assert "guest5 runs on" in r.stdout
    meta = sh(lab, "crm_resource", "-r", "guest5", "--meta", "-g", "kvmha-admission-override")
    assert "guest add forced" in meta and "loss of 1 host" in meta
    r = kvmha(lab, "plan", "--tolerate", "1")
    assert r.returncode == 3, r.stdout + r.stderr


def test_plan_matches_a_power_cut_and_after_orders_the_restarts(lab: Lab) -> None:
    """host2 runs guest2 (high), guest3 (low, starts --after guest2) and guest4 (medium,
    too big for the rest); guest1 on host1 is kept apart from guest2."""
    layout(lab, {"guest1": "host1", "guest2": "host2", "guest3": "host2", "guest4": "host2"})
    caps = {"host1": 1024, "host2": 2048, "host3": 1024}
    for h, mem in caps.items():
        ok(lab, "host", "capacity", h, "--cpu", "8", "--memory", str(mem))
    for g, mem in (("guest1", 512), ("guest2", 256), ("guest3", 256), ("guest4", 1024)):
        set_util(lab, g, 1, mem)
    ok(lab, "guest", "set", "guest1", "--priority", "high", "--tolerate", "0", "--force")
    ok(
        lab,
        "guest",
        "set",
        "guest2",
        "--priority",
        "high",
        "--apart-from",
        "guest1",
        "--tolerate",
        "0",
        "--force",
    )
    ok(
        lab,
        "guest",
        "set",
        "guest3",
        "--priority",
        "low",
        "--after",
        "guest2",
        "--tolerate",
        "0",
        "--force",
    )
    ok(lab, "guest", "set", "guest4", "--priority", "medium", "--tolerate", "0", "--force")
    settle(lab)
    assert where(lab) == {
        "guest1": "host1",
        "guest2": "host2",
        "guest3": "host2",
        "guest4": "host2",
    }
    p = json.loads(ok(lab, "plan", "--fail", "host2", "--json").stdout)
    validate(p)
    (s,) = p["scenarios"]
    plan = {g["name"]: g for g in s["guests"]}
    assert plan["guest2"]["to"] == "host3"  # apart from guest1
    assert plan["guest4"]["to"] is None and "no capacity" in plan["guest4"]["reason"]
    assert plan["guest3"]["to"] in ("host1", "host3")
    assert plan["guest2"]["order"] < plan["guest3"]["order"]
    assert "guest2" in plan["guest3"]["waits_for"]
    text = ok(lab, "plan", "--fail", "host2").stdout
    assert text.startswith("if host2 fails: guest2 restarts on host3 (1st)")

    # the plan is "if host2 fails": host2 must stay down. The lab's fence device reboots
    # by default, and a host that is back within seconds is the emptiest one for the
    # balanced placement, so the recovery would race its return (seen in a CI run)
    sh(lab, "crm_attribute", "--type", "crm_config", "--name", "stonith-action", "--update", "off")
    logs = log_sizes(lab)
    n_events = len(lab.power_events())
    lab.power_cut("host2")
    # this fence, not one from an earlier test on the shared lab; and the guests running
    # again off host2 (right after the cut the cluster still shows them there)
    wait_fenced(lab, "host2", n_events, 90)
    wait_for(
        "guest2 and guest3 running off host2",
        lambda: (
            lambda w: w["guest2"] not in (None, "host2") and w["guest3"] not in (None, "host2")
        )(where(lab)),
        240,
    )
    settle(lab)
    got = where(lab)
    for g in GUESTS:
        assert got[g] == plan[g]["to"], (g, got, plan)
    # status says why guest4 stays down
    st = json.loads(ok(lab, "status", "--json").stdout)
    down = {w["code"]: w["message"] for w in st["warnings"] if w["code"] == "guest-down"}
    assert "no capacity" in down.get("guest-down", ""), st["warnings"]
    g4 = next(g for g in st["guests"] if g["name"] == "guest4")
    assert g4["priority"] == "medium" and "no capacity" in g4["down_reason"]
    # operation history: guest3's start began only after guest2's start had finished
    events = [e for h in ("host1", "host3") for e in exec_events(lab, h, logs[h])]
    end2 = [t for t, k, r, a in events if (k, r, a) == ("end", "guest2", "start")]
    begin3 = [t for t, k, r, a in events if (k, r, a) == ("begin", "guest3", "start")]
    assert end2 and begin3, events
    assert min(begin3) >= max(end2), (end2, begin3)


EXEC_RE = re.compile(
    r"^(\w{3} \d\d \d\d:\d\d:\d\d\.\d{3}) \S+ pacemaker-execd .*?"
    r"(?:executing - rsc:(\S+) action:(\S+) |(\S+) (\S+) \(call \d+, PID \d+\) exited)"
)


def pacemaker_log(lab: Lab, host: str) -> Path:
    return lab.cfg.host_dir(host) / "var/log/pacemaker/pacemaker.log"


def log_sizes(lab: Lab) -> dict[str, int]:
    return {h: pacemaker_log(lab, h).stat().st_size for h in HOSTS}


def exec_events(lab: Lab, host: str, offset: int) -> list[tuple[datetime, str, str, str]]:
    """(time, 'begin'|'end', resource, action) of pacemaker-execd on host since offset:
    the operation history to the millisecond."""
    with open(pacemaker_log(lab, host), "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    out = []
    year = datetime.now().year
    for line in text.splitlines():
        m = EXEC_RE.match(line)
        if m:
            ts = datetime.strptime(f"{year} {m.group(1)}", "%Y %b %d %H:%M:%S.%f")
            if m.group(2):
                out.append((ts, "begin", m.group(2), m.group(3)))
            else:
                out.append((ts, "end", m.group(4), m.group(5)))
    return out


def log_tail(lab: Lab, host: str, offset: int) -> list[str]:
    with open(pacemaker_log(lab, host), "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace").splitlines()


def uptime_marks(lab: Lab) -> dict[str, int]:
    return {g: lab.serial_log_size(g) for g in GUESTS}


def test_evacuate_with_parallel_2_then_return_with_move_back(lab: Lab) -> None:
    layout(lab, {g: "host1" for g in GUESTS})
    settle(lab)
    marks = uptime_marks(lab)
    logs = log_sizes(lab)
    r = ok(lab, "host", "evacuate", "host1", "--parallel", "2", "--wait", "400", "--json")
    res = json.loads(r.stdout)
    validate(res)
    assert res["not_moved"] == [] and res["stuck"] == []
    assert sorted(m["guest"] for m in res["moved"]) == list(GUESTS)
    assert all(m["live"] for m in res["planned"]), res["planned"]
    got = where(lab)
    assert all(got[g] in ("host2", "host3") for g in GUESTS), got
    st = lab.cluster_state()
    assert st is not None and st.nodes["host1"].standby
    # no guest rebooted: no new READY marker on its serial console
    for g in GUESTS:
        assert not lab.guest_ready_since(g, marks[g]), f"{g} restarted instead of migrating"
    # never more than 2 live migrations at once: host1's execd ran every migrate_to
    running, most, begun = 0, 0, 0
    for _t, kind, _rsc, action in exec_events(lab, "host1", logs["host1"]):
        if action == "migrate_to":
            running += 1 if kind == "begin" else -1
            begun += kind == "begin"
            most = max(most, running)
    # at most 2: on a loaded machine Pacemaker's own load throttle (load-threshold,
    # "High CPU load detected") may run them one at a time, so 1 is allowed; that the
    # limit was really 2 during the evacuation shows in the CIB's change log
    assert begun == 4 and 1 <= most <= 2, (begun, most)
    limit_set = [
        line
        for h in HOSTS
        for line in log_tail(lab, h, logs[h])
        if "cib_perform_op" in line and 'name="migration-limit" value="2"' in line
    ]
    assert limit_set, "migration-limit=2 was never written"
    # migration-limit is back as it was
    assert "migration-limit" not in config(lab)
    marks = uptime_marks(lab)
    r = ok(lab, "host", "return", "host1", "--move-back", "--json")
    back = json.loads(r.stdout)
    validate(back)
    assert sorted(m["guest"] for m in back["moved_back"]) == list(GUESTS), back
    assert all(h == "host1" for h in where(lab).values())
    for g in GUESTS:
        assert not lab.guest_ready_since(g, marks[g])


def test_freeze_keeps_a_killed_guest_down_until_thaw(lab: Lab) -> None:
    settle(lab)
    host = where(lab)["guest1"]
    assert host is not None
    ok(lab, "ha", "freeze")
    st = json.loads(ok(lab, "status", "--json").stdout)
    assert st["cluster"]["frozen"] and st["warnings"][0]["code"] == "ha-frozen"
    assert "HA IS FROZEN" in ok(lab, "status").stdout
    marks = lab.serial_log_size("guest1")
    lab.run_in(host, ["kill", "-9", faults.qemu_pid(lab, host, "guest1")])
    time.sleep(30)  # three monitor intervals and a recheck: nothing may happen
    assert not lab.guest_ready_since("guest1", marks), "guest1 was recovered while frozen"
    ok(lab, "ha", "thaw")
    wait_for("guest1 recovered after thaw", lambda: lab.guest_ready_since("guest1", marks), 180)
    assert not json.loads(ok(lab, "status", "--json").stdout)["cluster"]["frozen"]
