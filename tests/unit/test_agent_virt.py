"""kvmha.virt, the one libvirt module: its tables match libvirt's own enums, the
watchdog answers through its callbacks, connect() is bounded, the resource mark
round-trips through libvirt and libvirtd's status files."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmha import virt

libvirt = pytest.importorskip("libvirt")

STATE_PREFIX = {
    virt.NOSTATE: "VIR_DOMAIN_NOSTATE_",
    virt.RUNNING: "VIR_DOMAIN_RUNNING_",
    virt.BLOCKED: "VIR_DOMAIN_BLOCKED_",
    virt.PAUSED: "VIR_DOMAIN_PAUSED_",
    virt.SHUTDOWN: "VIR_DOMAIN_SHUTDOWN_",
    virt.SHUTOFF: "VIR_DOMAIN_SHUTOFF_",
    virt.CRASHED: "VIR_DOMAIN_CRASHED_",
    virt.PMSUSPENDED: "VIR_DOMAIN_PMSUSPENDED_",
}


def test_error_and_state_constants_are_libvirts() -> None:
    for name in dir(virt):
        if name.startswith(("VIR_ERR_", "VIR_FROM_")):
            assert getattr(virt, name) == getattr(libvirt, name), name
    for const, name in [
        (virt.RUNNING, "VIR_DOMAIN_RUNNING"),
        (virt.PAUSED, "VIR_DOMAIN_PAUSED"),
        (virt.SHUTOFF, "VIR_DOMAIN_SHUTOFF"),
        (virt.CRASHED, "VIR_DOMAIN_CRASHED"),
        (virt.PMSUSPENDED, "VIR_DOMAIN_PMSUSPENDED"),
        (virt.SHUTDOWN, "VIR_DOMAIN_SHUTDOWN"),
        (virt.BLOCKED, "VIR_DOMAIN_BLOCKED"),
        (virt.NOSTATE, "VIR_DOMAIN_NOSTATE"),
    ]:
        assert const == getattr(libvirt, name)


def test_reason_tables_match_libvirts_enums() -> None:
    for state, prefix in STATE_PREFIX.items():
        table = virt.REASON_NAMES[state]
        for attr in dir(libvirt):
            if not attr.startswith(prefix) or attr.endswith("LAST"):
                continue
            if state == virt.SHUTDOWN and attr[len(prefix) :] not in ("UNKNOWN", "USER"):
                continue  # VIR_DOMAIN_SHUTDOWN_<mode> are shutdown flags, not reasons
            if state == virt.PMSUSPENDED and "DISK" in attr:
                continue
            value = getattr(libvirt, attr)
            assert table.get(value) == attr[len(prefix) :].lower(), attr


@pytest.mark.parametrize(
    ("state", "reason", "want"),
    [
        (virt.RUNNING, 1, "ok"),
        (virt.RUNNING, 11, "failed"),  # post-copy failed
        (virt.PAUSED, 1, "held"),  # an admin paused it
        (virt.PAUSED, 2, "held"),  # migration
        (virt.PAUSED, 5, "failed"),  # I/O error
        (virt.PAUSED, 6, "failed"),  # watchdog
        (virt.PAUSED, 10, "failed"),  # crashed (panic)
        (virt.PAUSED, 13, "failed"),  # post-copy failed
        (virt.PAUSED, 99, "held"),  # a reason newer than this table
        (virt.CRASHED, 1, "failed"),
        (virt.SHUTOFF, 2, "off"),
        (virt.PMSUSPENDED, 0, "held"),
        (42, 0, "held"),
    ],
)
def test_health(state: int, reason: int, want: str) -> None:
    assert virt.health(state, reason) == want


def test_describe() -> None:
    assert virt.describe(virt.PAUSED, 5) == "paused (ioerror)"
    assert virt.describe(virt.SHUTOFF, 0) == "shut off"
    assert virt.describe(virt.CRASHED, 1) == "crashed (panicked)"
    assert virt.reason_name(virt.PAUSED, 77) == "reason 77"


def test_uri_helpers() -> None:
    assert virt.uri_driver("qemu+ssh://h/system") == "qemu"
    assert virt.uri_driver("LXC:///") == "lxc"
    assert virt.is_local_uri("qemu:///system")
    assert not virt.is_local_uri("qemu+tcp://h/system")


def test_watchdog_calls_verdict_then_exit_callback() -> None:
    got: list[tuple[int, str]] = []
    wd = virt.Watchdog(
        time.monotonic() + 0.05,
        verdict=lambda step: (7, f"answer while {step}"),
        on_exit=lambda rc, reason: got.append((rc, reason)),
    )
    wd.step = "looking"
    end = time.monotonic() + 30
    while not got and time.monotonic() < end:
        time.sleep(0.01)
    assert got == [(7, "answer while looking")]
    assert wd.fired == (7, "answer while looking")
    assert not wd.finish()


def test_watchdog_never_fires_after_finish() -> None:
    got: list[tuple[int, str]] = []
    wd = virt.Watchdog(time.monotonic() + 0.2, on_exit=lambda rc, r: got.append((rc, r)))
    assert wd.finish()
    time.sleep(0.5)
    assert got == [] and wd.fired is None


def test_watchdog_verdict_that_raises_becomes_timeout_code() -> None:
    got: list[tuple[int, str]] = []

    def bad(step: str) -> tuple[int, str]:
        raise RuntimeError("boom")

    virt.Watchdog(time.monotonic(), verdict=bad, on_exit=lambda rc, r: got.append((rc, r)))
    end = time.monotonic() + 30
    while not got and time.monotonic() < end:
        time.sleep(0.01)
    assert got and got[0][0] == 1 and "boom" in got[0][1]


def test_watchdog_hard_exit_ends_a_process() -> None:
    code = (
        "import time\nfrom kvmha import virt\n"
        "w = virt.Watchdog(time.monotonic() + 0.1, verdict=lambda s: (3, 'late: ' + s))\n"
        "w.step = 'hanging'\ntime.sleep(60)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 3
    assert "late: hanging" in res.stderr


@pytest.fixture()
def hung_socket(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "hung-sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(8)
    yield path
    srv.close()


def test_connect_is_bounded_by_its_timeout(hung_socket: str) -> None:
    with pytest.raises(virt.ConnectTimeout, match="did not answer"):
        virt.connect(f"qemu:///system?socket={hung_socket}", 0.3, readonly=True)


def test_connect_raises_libvirts_error(tmp_path: Path) -> None:
    with pytest.raises(libvirt.libvirtError) as e:
        virt.connect(f"qemu:///system?socket={tmp_path}/none", 10)
    assert virt.connection_lost(e.value) or virt.err_code(e.value) > 0
    assert virt.err_text(e.value)


def test_connect_test_driver() -> None:
    conn = virt.connect("test:///default", 10)
    assert conn.lookupByName("test").name() == "test"
    conn.close()


def test_mark_round_trips_through_libvirt() -> None:
    lv = virt.load_libvirt()
    conn = lv.open("test:///default")
    dom = conn.lookupByName("test")
    assert virt.read_mark(lv, dom) is None
    name, root = virt.parse_domain(dom.XMLDesc(0), "test")
    virt.with_mark(root, "vm_web")
    import xml.etree.ElementTree as ET

    text = ET.tostring(root, encoding="unicode")
    assert virt.mark_of_element(ET.fromstring(text)) == "vm_web"
    dom.setMetadata(
        lv.VIR_DOMAIN_METADATA_ELEMENT,
        virt.mark_xml("vm_web"),
        virt.MARK_PREFIX,
        virt.MARK_NS,
        lv.VIR_DOMAIN_AFFECT_LIVE,
    )
    try:
        assert virt.read_mark(lv, dom) == "vm_web"
        c = virt.Connection(lv, "test:///default", None)
        assert [d.name() for d in c.marked("vm_web")] == ["test"]
        assert c.marked("vm_other") == []
        assert virt.mark_of_element(virt.parse_domain(dom.XMLDesc(0), "x")[1]) == "vm_web"
    finally:
        dom.setMetadata(
            lv.VIR_DOMAIN_METADATA_ELEMENT, None, None, virt.MARK_NS, lv.VIR_DOMAIN_AFFECT_LIVE
        )
    assert virt.read_mark(lv, dom) is None
    conn.close()


def test_parse_domain_errors() -> None:
    with pytest.raises(virt.DomainXMLError, match="not well-formed"):
        virt.parse_domain("<domain>", "f.xml")
    with pytest.raises(virt.DomainXMLError, match="root element <network>"):
        virt.parse_domain("<network/>", "f.xml")
    with pytest.raises(virt.DomainXMLError, match="no <name>"):
        virt.parse_domain("<domain/>", "f.xml")


@pytest.fixture()
def fake_qemu() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-c", "import time; time.sleep(120)"], executable=sys.executable
    )
    yield proc
    proc.kill()
    proc.wait()


def _status_xml(pid: int, name: str, mark: str | None) -> str:
    md = (
        f"<metadata><kvmha:resource xmlns:kvmha='{virt.MARK_NS}' id='{mark}'/></metadata>"
        if mark
        else ""
    )
    return (
        f"<domstatus state='running' reason='booted' pid='{pid}'>"
        f"<domain type='kvm' id='1'><name>{name}</name>"
        f"<uuid>AB0FE1C6-0E5B-4A4D-9A2F-0123456789AB</uuid>{md}</domain></domstatus>"
    )


def test_runtime_domains_reads_status_files(
    tmp_path: Path, fake_qemu: subprocess.Popen[bytes]
) -> None:
    time.sleep(0.1)
    (tmp_path / "web.xml").write_text(_status_xml(fake_qemu.pid, "web", "vm_web"))
    (tmp_path / "other.xml").write_text(_status_xml(fake_qemu.pid, "other", None))
    (tmp_path / "dead.xml").write_text(_status_xml(2**22 + 7, "dead", "vm_dead"))
    (tmp_path / "broken.xml").write_text("<domstatus")
    (tmp_path / "notes.txt").write_text("x")
    got = {d.name: d for d in virt.runtime_domains(str(tmp_path))}
    assert set(got) == {"web", "other"}
    assert got["web"].mark == "vm_web" and got["web"].pid == fake_qemu.pid
    assert got["web"].uuid == "ab0fe1c6-0e5b-4a4d-9a2f-0123456789ab"
    assert got["other"].mark is None
    assert virt.runtime_domains(str(tmp_path / "absent")) == []
    with pytest.raises(TimeoutError):
        virt.runtime_domains(str(tmp_path), deadline=time.monotonic() - 1)


def test_module_imports_nothing_heavy() -> None:
    code = "import sys, kvmha.virt; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    for heavy in ("libvirt", "xml.etree.ElementTree", "subprocess", "threading", "typing"):
        assert heavy not in out, heavy


def test_a_result_after_the_deadline_goes_to_on_late_and_an_early_one_to_the_caller() -> None:
    """call_with_deadline (behind connect): a connection that opens after the caller gave
    up is closed by its thread, never leaked; one in time is the caller's."""
    import threading

    release = threading.Event()
    late: list[str] = []

    def slow() -> str:
        release.wait(10)
        return "conn"

    with pytest.raises(TimeoutError):
        virt.call_with_deadline(slow, 0.2, on_late=late.append)
    release.set()
    for _ in range(200):
        if late:
            break
        threading.Event().wait(0.01)
    assert late == ["conn"]
    kept: list[str] = []
    assert virt.call_with_deadline(lambda: "now", 5, on_late=kept.append) == "now"
    assert kept == []
    with pytest.raises(ValueError, match="boom"):
        virt.call_with_deadline(lambda: int("boom"), 5)
