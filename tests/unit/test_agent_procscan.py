"""QEMU process lookup on a fake /proc."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvmha.agents.procscan import cmdline_guest_name, find_qemu_pids, name_from_arg


def fake_proc(tmp_path: Path, procs: dict[str, list[str]]) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    (root / "self").mkdir()
    (root / "meminfo").write_text("x")
    for pid, argv in procs.items():
        d = root / pid
        d.mkdir()
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0" if argv else b"")
    return root


def test_name_from_arg() -> None:
    assert name_from_arg("guest=vm1,debug-threads=on") == "vm1"
    assert name_from_arg("guest=a,,b,debug-threads=on") == "a,b"
    assert name_from_arg("vm1") == "vm1"
    assert name_from_arg("vm1,process=qemu:vm1") == "vm1"


def test_cmdline_guest_name() -> None:
    assert cmdline_guest_name(["/usr/bin/qemu-system-x86_64", "-name", "guest=x,debug"]) == "x"
    assert cmdline_guest_name(["/usr/libexec/qemu-kvm", "-name", "x"]) == "x"
    assert cmdline_guest_name(["/usr/bin/python3", "-name", "guest=x,"]) is None
    assert cmdline_guest_name(["/usr/bin/qemu-system-x86_64", "-name"]) is None


def test_find_qemu_pids(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            "100": [
                "/usr/bin/qemu-system-x86_64",
                "-name",
                "guest=vm1,debug-threads=on",
                "-m",
                "64",
            ],
            "101": ["/usr/libexec/qemu-kvm", "-name", "vm2", "-S"],
            "102": ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm10,debug-threads=on"],
            "103": ["/bin/grep", "-name", "guest=vm1,"],
            "104": [],  # zombie / kernel thread
            "105": ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm,,1,debug-threads=on"],
        },
    )
    assert find_qemu_pids("vm1", proc=str(proc)) == [100]
    assert find_qemu_pids("vm2", proc=str(proc)) == [101]
    assert find_qemu_pids("vm,1", proc=str(proc)) == [105]
    assert find_qemu_pids("vm3", proc=str(proc)) == []


def test_find_is_bounded(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {"1": ["/bin/init"], "2": ["/bin/sh"]})
    with pytest.raises(TimeoutError):
        find_qemu_pids("vm1", proc=str(proc), deadline=time.monotonic() - 1)
    with pytest.raises(TimeoutError):
        find_qemu_pids("vm1", proc=str(tmp_path / "nonexistent"))


def test_real_proc_finds_no_process_for_an_unknown_guest() -> None:
    # its speed is bench/agent.py's business; here only that a real /proc scan within a
    # deadline completes and finds nothing for a name no QEMU runs
    assert find_qemu_pids("kvmha-no-such-guest", deadline=time.monotonic() + 60) == []
