"""kvmha net: bad input gives a clear message, a non-zero exit and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kvmha.netcfg import kernel, nsutil, probe
from kvmha.tools.cli import Group
from kvmha.tools.net_cli import net


@click.group(cls=Group)
def kvmha() -> None:
    """The main group, as tools/cli.py registers net."""


kvmha.add_command(net)


def invoke(*args: str) -> tuple[int, str]:
    res = CliRunner(mix_stderr=False).invoke(kvmha, list(args))
    return res.exit_code, res.stdout + res.stderr


@pytest.fixture
def no_leftovers() -> object:
    before = set(nsutil.listnetns())
    runs = kernel.DEFAULT_CACHE / "runs"
    runs_before = set(os.listdir(runs)) if runs.is_dir() else set()
    yield None
    assert set(nsutil.listnetns()) == before
    if runs.is_dir():
        assert set(os.listdir(runs)) <= runs_before


def test_check_unknown_namespace(no_leftovers: object) -> None:
    rc, out = invoke("net", "check", "--netns", "kn-no-such-ns")
    assert rc == 3
    assert "network namespace 'kn-no-such-ns' does not exist" in out


def test_check_bad_option_is_not_a_verdict() -> None:
    rc, out = invoke("net", "check", "--bogus")
    assert rc == 3
    assert out.splitlines()[0] == "kvmha: error: net check: no such option: --bogus"
    assert out.splitlines()[1].startswith("kvmha: fix: usage: kvmha net check [OPTIONS]")


def test_probe_unknown_mode(no_leftovers: object) -> None:
    rc, out = invoke("net", "probe", "--mode", "9")
    assert rc == 2 and "unknown bond mode '9'" in out


def test_probe_unknown_switch(no_leftovers: object) -> None:
    rc, out = invoke("net", "probe", "--mode", "1", "--switch", "cisco")
    assert rc == 2 and "unknown switch kind" in out


def test_probe_kernel_that_is_not_a_kernel(no_leftovers: object, tmp_path: Path) -> None:
    rc, out = invoke("net", "probe", "--mode", "1", "--kernel", "/etc/hostname")
    assert rc == 2 and "is not a Linux kernel image" in out


def test_probe_kernel_directory(no_leftovers: object) -> None:
    rc, out = invoke("net", "probe", "--mode", "1", "--kernel", "/etc")
    assert rc == 2 and "is a directory" in out


def test_probe_missing_kernel(no_leftovers: object) -> None:
    rc, out = invoke("net", "probe", "--mode", "1", "--kernel", "/nonexistent/vmlinuz")
    assert rc == 2 and "cannot read kernel" in out


def test_probe_modules_without_kernel() -> None:
    rc, out = invoke("net", "probe", "--mode", "1", "--modules", "/lib/modules")
    assert rc == 2 and "--modules needs --kernel" in out


def test_probe_without_bonding_points_to_kernel(
    no_leftovers: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests run as root (scripts/test.sh)")
    monkeypatch.setattr(probe, "has_bonding", lambda: False)
    monkeypatch.setattr(os, "access", lambda *_a: False)  # no modprobe either
    rc, out = invoke("net", "probe", "--mode", "1")
    assert rc == 1
    assert "has no bonding driver" in out and "--kernel PATH" in out


def _fake_kernel(root: Path) -> Path:
    img = root / "boot" / "vmlinuz-6.1.0-test"
    img.parent.mkdir(parents=True)
    head = bytearray(0x400)
    head[0x202:0x206] = b"HdrS"
    head[0x20E:0x210] = (0x100).to_bytes(2, "little")
    head[0x300:0x310] = b"6.1.0-test (x)\0\0"
    img.write_bytes(bytes(head))
    (root / "lib" / "modules" / "6.1.0-test" / "kernel").mkdir(parents=True)
    return img


def test_kernel_under_tmp_is_refused(tmp_path: Path) -> None:
    img = _fake_kernel(tmp_path)  # pytest's tmp_path is under /tmp
    with pytest.raises(kernel.UsageError, match="does not see"):
        kernel.open_kernel(img)


def test_kernel_without_modules(tmp_path: Path) -> None:
    img = _fake_kernel(tmp_path)
    with pytest.raises(kernel.UsageError, match="no modules for kernel 6.1.0-test"):
        kernel.open_kernel(img, tmp_path / "elsewhere")


def test_bzimage_header(tmp_path: Path) -> None:
    img = tmp_path / "vmlinuz"
    head = bytearray(0x400)
    head[0x202:0x206] = b"HdrS"
    head[0x20E:0x210] = (0x100).to_bytes(2, "little")
    head[0x300:0x310] = b"6.1.0-test (x)\0\0"
    img.write_bytes(bytes(head))
    assert kernel.bzimage_version(img) == "6.1.0-test"
    img.write_bytes(b"\0" * 0x400)
    with pytest.raises(kernel.UsageError, match="not a Linux kernel image"):
        kernel.bzimage_version(img)
