"""kvmha doctor's checks with fakes: no daemon, no cluster, no libvirt (seconds)."""

from __future__ import annotations

import grp
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kvmha.tools import doctor as d
from kvmha.tools.systemd import Proc, ProcMatch, find_processes, list_processes

DATA = Path(__file__).parent / "data"
# a real 'crm_mon -1 --output-as=xml' of a 3-host lab after host3 was fenced: quorate,
# stonith enabled, device lab-power running
CRM_MON = (DATA / "crm_mon_after_fence.xml").read_text()


def crm_mon_runner(xml: str, rc: int = 0, stderr: str = "") -> d.Runner:
    def runner(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        assert argv[0] == "crm_mon", argv
        return subprocess.CompletedProcess(list(argv), rc, xml, stderr)

    return runner


def procs(*spec: tuple[str, str]) -> list[Proc]:
    """Processes by (comm, argv joined by spaces), state S."""
    return [Proc(10 + i, c, tuple(a.split()), "S") for i, (c, a) in enumerate(spec)]


HEALTHY_PROCS = procs(
    ("corosync", "/usr/sbin/corosync -f"),
    ("pacemakerd", "/usr/sbin/pacemakerd"),
    ("kvmha-fence-lis", "/usr/bin/python3 -I /usr/sbin/kvmha-fence-listener --config x"),
    ("chronyd", "/usr/sbin/chronyd -F 2"),
    ("virtlockd", "/usr/sbin/virtlockd"),
)

NET_OK = {"netns": None, "links": 3, "bridges": [{"name": "br0", "verdict": "ok", "findings": []}]}


def make_etc(root: Path) -> d.Options:
    """A host's key and configuration files, all with the modes the RPM installs."""
    etc = root / "kvmha"
    (etc / "fence" / "keys").mkdir(parents=True)
    os.chmod(etc, 0o750)
    os.chmod(etc / "fence", 0o750)
    os.chmod(etc / "fence" / "keys", 0o700)
    conf = etc / "fence" / "listener.conf"
    conf.write_text("[listener]\nhost = host1\n")
    os.chmod(conf, 0o640)
    for key in (etc / "fence" / "hosts.key", etc / "fence" / "keys" / "guests-a.key"):
        key.write_text("name=x\nsecret=00\n")
        os.chmod(key, 0o600)
    (root / "corosync").mkdir()
    ck = root / "corosync" / "authkey"
    ck.write_bytes(b"\0" * 32)
    os.chmod(ck, 0o400)
    (root / "libvirt" / "lockspace").mkdir(parents=True)
    (root / "libvirt" / "qemu.conf").write_text('lock_manager = "lockd"\n')
    (root / "libvirt" / "qemu-lockd.conf").write_text(
        f'file_lockspace_dir = "{root / "libvirt" / "lockspace"}"\n'
    )
    return d.Options(
        qemu_conf=str(root / "libvirt" / "qemu.conf"),
        qemu_lockd_conf=str(root / "libvirt" / "qemu-lockd.conf"),
        etc_kvmha=str(etc),
        listener_conf=str(conf),
        corosync_authkey=str(ck),
        pacemaker_authkey=str(root / "pacemaker" / "authkey"),
        timeout=2.0,
    )


def context(opts: d.Options, **kw: Any) -> d.Context:
    kw.setdefault("runner", crm_mon_runner(CRM_MON))
    kw.setdefault("services", d.ProcessSource(HEALTHY_PROCS))
    kw.setdefault("libvirt_probe", lambda uri: f"libvirt 9.0.0 at {uri} answers")
    kw.setdefault("net_check", lambda: NET_OK)
    return d.Context(opts, **kw)


def codes(findings: list[d.Finding], severity: str | None = None) -> set[str]:
    return {f.code for f in findings if severity is None or f.severity == severity}


# ---- whole runs --------------------------------------------------------------------------


def test_healthy_host_has_no_warning_or_error(tmp_path: Path) -> None:
    findings = d.run_checks(context(make_etc(tmp_path)))
    bad = [f for f in findings if f.severity != d.OK]
    assert not bad, bad
    assert codes(findings) >= {
        "libvirt",
        "corosync",
        "pacemaker",
        "kvmha-fence-listener",
        "stonith",
        "quorum",
        "timesync",
        "key-modes",
        "net-ok",
        "lock-manager",
        "virtlockd",
    }
    assert d.exit_code(findings) == 0
    assert {f.check for f in findings} == set(d.CHECK_NAMES)


def test_broken_host_every_problem_found_with_its_fix(tmp_path: Path) -> None:
    opts = make_etc(tmp_path)
    key = Path(opts.etc_kvmha) / "fence" / "keys" / "guests-a.key"
    os.chmod(key, 0o644)
    xml = CRM_MON.replace('stonith-enabled="true"', 'stonith-enabled="false"')
    stopped = [p for p in HEALTHY_PROCS if p.comm != "kvmha-fence-lis"]
    findings = d.run_checks(
        context(opts, runner=crm_mon_runner(xml), services=d.ProcessSource(stopped))
    )
    errors = {f.code: f for f in findings if f.severity == d.ERROR}
    assert set(errors) == {"stonith-disabled", "key-mode", "kvmha-fence-listener-stopped"}
    assert errors["stonith-disabled"].fix == "pcs property set stonith-enabled=true"
    assert errors["key-mode"].fix == f"chmod 0600 {key}"
    assert "0644" in errors["key-mode"].message
    assert "systemctl start kvmha-fence-listener" in errors["kvmha-fence-listener-stopped"].fix
    assert all(f.fix for f in findings if f.severity != d.OK)
    assert d.exit_code(findings) == 2


def test_report_json_shape(tmp_path: Path) -> None:
    doc = d.report(context(make_etc(tmp_path)))
    assert set(doc) >= {"host", "findings", "summary"}
    assert doc["summary"] == {"ok": len(doc["findings"]), "warning": 0, "error": 0}
    assert doc["services_from"] == "processes"
    for f in doc["findings"]:
        assert set(f) == {"severity", "code", "message", "fix", "check"}
    assert d.report_exit_code(doc) == 0


def test_a_check_that_crashes_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    def boom(uri: str) -> str:
        raise RuntimeError("kaputt")

    checks = d.select_checks(only=["libvirt", "keys"])
    findings = d.run_checks(context(make_etc(tmp_path), libvirt_probe=boom), checks)
    assert findings[0].code == "libvirt-failed" and "kaputt" in findings[0].message
    assert findings[1].code == "key-modes"


def test_select_checks() -> None:
    assert [c.name for c in d.select_checks(skip=["network"])] == list(d.CHECK_NAMES[:-1])
    assert [c.name for c in d.select_checks(only=["keys"])] == ["keys"]
    with pytest.raises(d.UsageError, match="unknown check"):
        d.select_checks(skip=["nope"])
    with pytest.raises(d.UsageError, match="exclude"):
        d.select_checks(skip=["keys"], only=["libvirt"])


# ---- libvirt -----------------------------------------------------------------------------


def test_libvirt_that_hangs_is_reported_within_the_deadline(tmp_path: Path) -> None:
    opts = make_etc(tmp_path)
    opts.timeout = 0.3
    gate = threading.Event()  # the probe blocks until the test ends: it never answers
    try:
        f = d.check_libvirt(context(opts, libvirt_probe=lambda uri: gate.wait(600) and ""))
        assert not gate.is_set()  # the check answered while the probe still hangs
    finally:
        gate.set()
    assert f[0].severity == d.ERROR and f[0].code == "libvirt-timeout"
    assert "systemctl restart libvirtd" in f[0].fix


def test_libvirt_refused(tmp_path: Path) -> None:
    def refused(uri: str) -> str:
        raise d.KvmhaError(f"cannot open {uri}: Failed to connect socket")

    f = d.check_libvirt(context(make_etc(tmp_path), libvirt_probe=refused))
    assert f[0].code == "libvirt-unreachable" and "libvirtd" in f[0].fix


def test_libvirt_real_probe_of_a_missing_socket() -> None:
    pytest.importorskip("libvirt")
    with pytest.raises(d.KvmhaError, match="cannot open"):
        d.probe_libvirt("qemu:///system?socket=/nonexistent/libvirt-sock")


# ---- cluster: stonith and quorum ---------------------------------------------------------


def cluster(xml: str, rc: int = 0) -> list[d.Finding]:
    return d.check_cluster(context(d.Options(), runner=crm_mon_runner(xml, rc)))


def test_cluster_healthy() -> None:
    f = cluster(CRM_MON)
    assert [x.code for x in f] == ["stonith", "quorum"]
    assert "lab-power" in f[0].message
    assert "2 of 3 node(s) online" in f[1].message


def test_stonith_disabled() -> None:
    f = cluster(CRM_MON.replace('stonith-enabled="true"', 'stonith-enabled="false"'))
    assert codes(f, d.ERROR) == {"stonith-disabled"}


def test_no_stonith_device() -> None:
    xml = CRM_MON.replace('resource_agent="stonith:fence_kvmhalab"', 'resource_agent="ocf:x:y"')
    f = cluster(xml)
    assert codes(f, d.ERROR) == {"stonith-no-device"}
    assert "pcs stonith create" in f[0].fix


def test_stonith_device_stopped() -> None:
    xml = CRM_MON.replace(
        'resource_agent="stonith:fence_kvmhalab" role="Started" active="true"',
        'resource_agent="stonith:fence_kvmhalab" role="Stopped" active="false"',
    )
    assert codes(cluster(xml), d.ERROR) == {"stonith-device-stopped"}


def test_stonith_enabled_from_crm_attribute_when_crm_mon_does_not_say() -> None:
    xml = CRM_MON.replace('stonith-enabled="true" ', "")
    calls = []

    def runner(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        calls.append(argv[0])
        if argv[0] == "crm_mon":
            return subprocess.CompletedProcess(list(argv), 0, xml, "")
        return subprocess.CompletedProcess(list(argv), 0, "false\n", "")

    f = d.check_cluster(context(d.Options(), runner=runner))
    assert calls == ["crm_mon", "crm_attribute"]
    assert codes(f, d.ERROR) == {"stonith-disabled"}


def test_quorum_lost() -> None:
    f = cluster(CRM_MON.replace('with_quorum="true"', 'with_quorum="false"'))
    assert codes(f, d.ERROR) == {"quorum-lost"}


def test_no_dc() -> None:
    f = cluster(CRM_MON.replace('present="true"', 'present="false"'))
    assert codes(f, d.ERROR) == {"quorum-no-controller"}


def test_cluster_down_is_one_error() -> None:
    xml = (
        '<pacemaker-result api-version="2.25" request="crm_mon">'
        '<status code="102" message="Not connected"/></pacemaker-result>'
    )
    f = cluster(xml, rc=102)
    assert [(x.code, x.severity) for x in f] == [("cluster-unreachable", d.ERROR)]
    assert "Not connected" in f[0].message and "pcs cluster start" in f[0].fix


def test_cluster_tools_missing() -> None:
    def runner(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        raise d.KvmhaError(f"{argv[0]} is not installed", "install pacemaker-cli")

    f = d.check_cluster(context(d.Options(), runner=runner))
    assert f[0].code == "cluster-unreachable" and f[0].fix == "install pacemaker-cli"


# ---- services as processes -----------------------------------------------------------------


def test_services_as_processes_say_that_systemd_is_absent(tmp_path: Path) -> None:
    opts = make_etc(tmp_path)
    opts.systemd_dir = str(tmp_path / "no-systemd")
    opts.proc = str(tmp_path / "no-proc")
    f = d.check_services(context(opts, services=None))
    assert f[0].code == "systemd-absent" and f[0].severity == d.WARNING
    assert codes(f, d.ERROR) == {
        "corosync-stopped",
        "pacemaker-stopped",
        "kvmha-fence-listener-stopped",
    }


def test_paused_service_is_stopped(tmp_path: Path) -> None:
    ps = [Proc(7, "corosync", ("/usr/sbin/corosync", "-f"), "T"), *HEALTHY_PROCS[1:]]
    f = d.check_services(context(make_etc(tmp_path), services=d.ProcessSource(ps)))
    err = [x for x in f if x.severity == d.ERROR]
    assert [x.code for x in err] == ["corosync-stopped"]
    assert "SIGSTOP" in err[0].message and "kill -CONT" in err[0].fix


def test_listener_unconfigured_is_a_warning(tmp_path: Path) -> None:
    opts = make_etc(tmp_path)
    os.unlink(Path(opts.etc_kvmha) / "fence" / "hosts.key")
    ps = [p for p in HEALTHY_PROCS if p.comm != "kvmha-fence-lis"]
    f = d.check_services(context(opts, services=d.ProcessSource(ps)))
    assert codes(f, d.WARNING) == {"kvmha-fence-listener-unconfigured"}
    assert not codes(f, d.ERROR)
    os.unlink(opts.listener_conf)
    assert d.listener_configured(opts.listener_conf) == (
        False,
        f"{opts.listener_conf} does not exist",
    )


def test_time_sync(tmp_path: Path) -> None:
    opts = make_etc(tmp_path)
    f = d.check_time_sync(context(opts))
    assert f[0].code == "timesync"
    ps = [p for p in HEALTHY_PROCS if p.comm != "chronyd"]
    f = d.check_time_sync(context(opts, services=d.ProcessSource(ps)))
    assert f[0].code == "timesync-missing" and f[0].severity == d.WARNING
    assert f[0].fix.startswith("install and enable chrony")
    ps.append(Proc(99, "systemd-timesyn", ("/lib/systemd/systemd-timesyncd",), "S"))
    assert d.check_time_sync(context(opts, services=d.ProcessSource(ps)))[0].code == "timesync"


def fake_proc(
    root: Path, pid: int, comm: str, argv: list[str], state: str = "S", ns: str = "A"
) -> None:
    p = root / str(pid)
    p.mkdir(parents=True)
    (p / "comm").write_text(comm + "\n")
    (p / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + (b"\0" if argv else b""))
    (p / "stat").write_text(f"{pid} ({comm}) {state} 1 1 1 0 -1\n")
    (p / "ns").mkdir()
    os.symlink(f"pid:[{ns}]", p / "ns" / "pid")  # dangling is fine: only read by readlink


def test_proc_scan_keeps_to_its_pid_namespace(tmp_path: Path) -> None:
    fake_proc(tmp_path, 1, "python3", ["/usr/bin/python3", "-m", "init"])
    fake_proc(tmp_path, 20, "corosync", ["/usr/sbin/corosync", "-f"])
    fake_proc(tmp_path, 21, "corosync", ["/usr/sbin/corosync", "-f"], ns="B")  # another host
    fake_proc(tmp_path, 22, "kthreadd", [])  # a kernel thread: empty command line
    fake_proc(tmp_path, 23, "pacemakerd", ["/usr/sbin/pacemakerd"], state="Z")
    fake_proc(tmp_path, 24, "python3", ["/usr/bin/python3", "-I", "-m", "kvmha.fence.listener"])
    fake_proc(tmp_path, 25, "libvirtd", ["/usr/sbin/libvirtd"], state="T")
    os.symlink("1", tmp_path / "self")
    ps = list_processes(str(tmp_path))
    assert [p.pid for p in ps] == [1, 20, 24, 25]
    assert ps[3].stopped
    assert [p.pid for p in find_processes((ProcMatch(comm="corosync"),), ps)] == [20]
    listener = find_processes(d.FENCE_LISTENER.procs, ps)
    assert [p.pid for p in listener] == [24]
    assert len(list_processes(str(tmp_path), same_pid_ns=False)) == 5


def test_proc_scan_of_this_machine_sees_a_real_process_stop_and_go() -> None:
    # a stand-in listener, a real process: found, paused by SIGSTOP, gone after SIGKILL
    proc = subprocess.Popen(["bash", "-c", "exec -a kvmha-fence-listener sleep 60"])
    try:
        time.sleep(0.2)

        def state() -> d.ServiceState:
            return d.ProcessSource(list_processes()).state(d.FENCE_LISTENER)

        st = state()
        assert st.running and f"pid {proc.pid}" in st.detail
        os.kill(proc.pid, 19)  # SIGSTOP
        time.sleep(0.2)
        st = state()
        assert not st.running and st.paused
        findings = d.service_findings(d.FENCE_LISTENER, st)
        assert findings[0].code == "kvmha-fence-listener-stopped"
        os.kill(proc.pid, 9)
        proc.wait(5)
        assert not state().found
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# ---- key file modes ------------------------------------------------------------------------


def test_key_modes_ok(tmp_path: Path) -> None:
    f = d.check_keys(context(make_etc(tmp_path)))
    assert [x.code for x in f] == ["key-modes"]
    assert "7 key and configuration path(s)" in f[0].message


@pytest.mark.parametrize(
    ("rel", "mode", "severity", "fix_mode"),
    [
        ("fence/keys/guests-a.key", 0o644, d.ERROR, "0600"),
        ("fence/keys/guests-a.key", 0o640, d.ERROR, "0600"),
        ("fence/hosts.key", 0o604, d.ERROR, "0600"),
        ("fence/keys", 0o750, d.ERROR, "0700"),
        ("fence", 0o755, d.WARNING, "0750"),
        (".", 0o755, d.WARNING, "0750"),
        ("fence/listener.conf", 0o644, d.WARNING, "0640"),
    ],
)
def test_key_modes_too_open(
    tmp_path: Path, rel: str, mode: int, severity: str, fix_mode: str
) -> None:
    opts = make_etc(tmp_path)
    path = os.path.normpath(os.path.join(opts.etc_kvmha, rel))
    os.chmod(path, mode)
    f = d.check_keys(context(opts))
    assert len(f) == 1, f
    assert f[0].severity == severity
    assert f"mode {mode:04o}" in f[0].message
    assert f[0].fix == f"chmod {fix_mode} {path}"


def test_a_file_in_a_keys_directory_is_a_key_whatever_its_name(tmp_path: Path) -> None:
    opts = make_etc(tmp_path)
    odd = Path(opts.etc_kvmha) / "fence" / "keys" / "notes.txt"
    odd.write_text("secret=00")
    os.chmod(odd, 0o644)
    assert d.check_keys(context(opts))[0].code == "key-mode"


def test_cluster_keys(tmp_path: Path) -> None:
    opts = make_etc(tmp_path)
    os.chmod(opts.corosync_authkey, 0o444)
    f = d.check_keys(context(opts))
    assert [(x.code, x.fix) for x in f] == [("key-mode", f"chmod 0400 {opts.corosync_authkey}")]
    os.chmod(opts.corosync_authkey, 0o600)
    pk = Path(opts.pacemaker_authkey)
    pk.parent.mkdir()
    pk.write_bytes(b"\0" * 32)
    os.chmod(pk, 0o640)  # group root: others of that group must not read it
    f = d.check_keys(context(opts))
    assert [x.code for x in f] == ["key-mode"]
    assert f[0].fix == f"chown hacluster:haclient {pk} && chmod 0640 {pk}"
    try:
        gid = grp.getgrnam("haclient").gr_gid
    except KeyError:
        pytest.skip("no haclient group here")
    os.chown(pk, 0, gid)  # what Pacemaker documents: group haclient may read it
    assert [x.code for x in d.check_keys(context(opts))] == ["key-modes"]


def test_key_owned_by_another_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    opts = make_etc(tmp_path)
    key = Path(opts.etc_kvmha) / "fence" / "hosts.key"
    os.chown(key, 65534, 65534)
    f = d.check_keys(context(opts))
    assert [(x.code, x.fix) for x in f] == [("key-owner", f"chown root:root {key}")]


def test_etc_kvmha_missing(tmp_path: Path) -> None:
    opts = d.Options(
        etc_kvmha=str(tmp_path / "nope"),
        corosync_authkey=str(tmp_path / "x"),
        pacemaker_authkey=str(tmp_path / "y"),
    )
    f = d.check_keys(context(opts))
    assert [(x.code, x.severity) for x in f] == [("etc-kvmha-missing", d.WARNING)]


# ---- network -------------------------------------------------------------------------------


def test_network_verdicts() -> None:
    report = {
        "bridges": [
            {"name": "br0", "verdict": "ok", "findings": [{"severity": "info", "message": "x"}]},
            {
                "name": "br1",
                "verdict": "incompatible",
                "findings": [
                    {"severity": "incompatible", "message": "bond0 mode 6 balance-alb breaks"},
                    {"severity": "warning", "message": "miimon 0"},
                ],
            },
            {
                "name": "br2",
                "verdict": "warning",
                "findings": [{"severity": "warning", "message": "w"}],
            },
        ]
    }
    f = d.check_network(context(d.Options(), net_check=lambda: report))
    assert [(x.severity, x.code) for x in f] == [
        (d.OK, "net-ok"),
        (d.ERROR, "net-incompatible"),
        (d.WARNING, "net-warning"),
    ]
    assert "balance-alb breaks (+1 more)" in f[1].message
    assert "kvmha net check" in f[1].fix


def test_network_checker_unavailable_is_a_warning() -> None:
    def broken() -> dict[str, Any]:
        raise ImportError("No module named 'pyroute2'")

    f = d.check_network(context(d.Options(), net_check=broken))
    assert [(x.severity, x.code) for x in f] == [(d.WARNING, "net-unavailable")]
    assert "pyroute2" in f[0].message


def test_network_real_checker_answers() -> None:
    # the real kvmha.netcfg library on this machine: a verdict or 'no bridges', never a crash
    f = d.check_network(d.Context(d.Options()))
    assert f and all(x.code.startswith("net-") for x in f)
    assert "net-unavailable" not in {x.code for x in f}


# ---- disk leases ----------------------------------------------------------------------------


def lock_opts(tmp_path: Path, qemu: str | None, lockd: str | None = None) -> d.Options:
    q, lk = tmp_path / "qemu.conf", tmp_path / "qemu-lockd.conf"
    q.unlink(missing_ok=True)
    lk.unlink(missing_ok=True)
    if qemu is not None:
        q.write_text(qemu)
    if lockd is not None:
        lk.write_text(lockd)
    return d.Options(qemu_conf=str(q), qemu_lockd_conf=str(lk), timeout=2.0)


def lock_codes(opts: d.Options, procs: list[str]) -> list[tuple[str, str]]:
    ps = [Proc(100 + i, c, (f"/usr/sbin/{c}",), "S") for i, c in enumerate(procs)]
    ctx = context(opts, services=d.ProcessSource(ps))
    return [(f.severity, f.code) for f in d.check_locks(ctx)]


def test_locks_off_is_a_warning_that_names_the_fix(tmp_path: Path) -> None:
    opts = lock_opts(tmp_path, '#lock_manager = "lockd"\nuser = "qemu"\n')
    ctx = context(opts, services=d.ProcessSource([]))
    (f,) = d.check_locks(ctx)
    assert (f.severity, f.code) == (d.WARNING, "lock-manager-off")
    assert 'lock_manager = "lockd"' in f.fix and "not atomic" in f.message


def test_lockd_with_a_lockspace_and_virtlockd_running(tmp_path: Path) -> None:
    space = tmp_path / "lockspace"
    space.mkdir()
    opts = lock_opts(
        tmp_path, 'lock_manager = "lockd"  # leases\n', f'file_lockspace_dir = "{space}"\n'
    )
    assert lock_codes(opts, ["virtlockd"]) == [(d.OK, "lock-manager"), (d.OK, "virtlockd")]
    assert lock_codes(opts, []) == [(d.OK, "lock-manager"), (d.ERROR, "virtlockd-stopped")]


def test_lockd_problems(tmp_path: Path) -> None:
    gone = tmp_path / "not-mounted"
    opts = lock_opts(tmp_path, 'lock_manager = "lockd"\n', f'file_lockspace_dir = "{gone}"\n')
    assert lock_codes(opts, ["virtlockd"])[0] == (d.ERROR, "lockspace-missing")
    opts = lock_opts(tmp_path, 'lock_manager = "lockd"\n', "auto_disk_leases = 0\n")
    assert lock_codes(opts, ["virtlockd"])[0] == (d.WARNING, "lockd-no-auto-leases")
    opts = lock_opts(tmp_path, 'lock_manager = "nolock"\n')
    assert lock_codes(opts, ["virtlockd"]) == [(d.ERROR, "lock-manager-unknown")]
    opts = lock_opts(tmp_path, 'lock_manager = "sanlock"\n')
    assert lock_codes(opts, ["sanlock"]) == [(d.OK, "lock-manager"), (d.OK, "sanlock")]
    assert lock_codes(lock_opts(tmp_path, None), []) == [(d.WARNING, "lock-manager-unknown")]
