"""Run a command under another kernel: QEMU (TCG) with this host's root file system shared
read-only over virtio-9p, a tiny busybox initramfs, one read-write share for results.

The guest runs this host's /usr/bin/python3 and pyroute2, so the probe inside is the same
code. Its output streams over the serial console; lines that start with ``kvmha-net:`` are
progress and are passed on. QEMU is started and stopped by its PID; the working directory
(under /var/cache/kvmha/netprobe, never /tmp: the guest mounts a fresh /tmp) is removed at
the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from kvmha.errors import KvmhaError
from kvmha.netcfg import kernel as kmod
from kvmha.netcfg.nsutil import sigterm_as_interrupt
from kvmha.process import CLEAN_PATH

Progress = Callable[[str], None]
MARK = "kvmha-net:"
QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
MEMORY = "1G"
CPUS = "2"
# virtio-pci and 9p are modules in Debian's kernel: the initramfs loads them.
INITRD_MODULES = ("virtio_pci", "9pnet_virtio", "9p")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "kvmha-net: insmod $m failed"; done
XFER=$(sed -n 's/.*kvmha_xfer=\([^ ]*\).*/\1/p' /proc/cmdline)
O=trans=virtio,version=9p2000.L,msize=262144
if ! mount -t 9p -o $O,ro,cache=loose hostroot /newroot; then
    echo "kvmha-net: cannot mount the host root over 9p"; echo o > /proc/sysrq-trigger
fi
mount -t tmpfs -o mode=755 tmpfs /newroot/run
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=1777 tmpfs /newroot/var/tmp
mount -t 9p -o $O xfer "/newroot$XFER" || echo "kvmha-net: cannot mount $XFER"
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /bin/sh "$XFER/guest-run.sh"
"""

GUEST_RUN = """#!/bin/sh
# PID 1 in the guest after switch_root (the host's root file system, read-only)
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo /bin/false > /proc/sys/kernel/modprobe
echo "{mark} guest up at $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r)" > /dev/console
cd /
env -i {env} {argv} > /dev/console 2>&1
echo $? > {xfer}/rc
sync
echo o > /proc/sysrq-trigger
while :; do sleep 1; done
"""


@dataclasses.dataclass
class VmRun:
    rc: int
    console: list[str]
    elapsed_s: float


def _cpio_newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc cpio archive: (name, mode, data, (rdev major, minor))."""
    out = bytearray()

    def pad(n: int) -> bytes:
        return b"\0" * ((4 - n % 4) % 4)

    for ino, (name, mode, data, rdev) in enumerate(
        [*entries, ("TRAILER!!!", 0, b"", (0, 0))], start=1
    ):
        nb = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0)
        hdr = b"070701" + b"".join(b"%08x" % f for f in fields)
        out += hdr + nb + pad(len(hdr) + len(nb)) + data + pad(len(data))
    return bytes(out)


def initramfs(k: kmod.Kernel, cache: Path = kmod.DEFAULT_CACHE) -> Path:
    """The busybox initramfs for kernel k (built once, cached by content)."""
    if not os.access(BUSYBOX, os.X_OK):
        raise KvmhaError("busybox is missing", "apt-get install busybox-static")
    mods = kmod.load_order(INITRD_MODULES, kmod.module_index(k.modules))
    h = hashlib.sha256(INIT.encode() + k.version.encode())
    for m in mods:
        h.update(str(m).encode())
    out = cache / f"initramfs-{k.version}-{h.hexdigest()[:12]}.img"
    if out.exists():
        return out
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = []
    for d in ("bin", "dev", "proc", "sys", "newroot", "mods"):
        entries.append((d, 0o040755, b"", (0, 0)))
    entries.append(("dev/console", 0o020600, b"", (5, 1)))
    entries.append(("bin/busybox", 0o100755, Path(BUSYBOX).read_bytes(), (0, 0)))
    entries.append(("init", 0o100755, INIT.encode(), (0, 0)))
    for m in mods:
        entries.append((f"mods/{m.name}", 0o100644, m.read_bytes(), (0, 0)))
    entries.append(("mods/order", 0o100644, " ".join(m.name for m in mods).encode(), (0, 0)))
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    import gzip

    with gzip.open(tmp, "wb", compresslevel=1) as f:
        f.write(_cpio_newc(entries))
    os.replace(tmp, out)
    return out


def _guest_env(k: kmod.Kernel) -> dict[str, str]:
    env = {
        "PATH": CLEAN_PATH,
        "HOME": "/tmp",  # noqa: S108 - the guest's own fresh tmpfs
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "KVMHA_NET_MODULES": str(k.modules),
        "KVMHA_NET_IN_VM": "1",
    }
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def run_in_vm(
    k: kmod.Kernel,
    argv: list[str],
    progress: Progress = lambda _m: None,
    timeout: float = 600.0,
    files: Optional[dict[str, bytes]] = None,
    collect: Optional[Callable[[Path], Any]] = None,
    cache: Path = kmod.DEFAULT_CACHE,
) -> tuple[VmRun, Any]:
    """Boot k, run argv as root in the guest (cwd /), power off. `{xfer}` in argv is the
    read-write shared directory (same path in guest and host); files are put there first;
    collect(xfer) is called before the directory is removed."""
    if shutil.which(QEMU) is None:
        raise KvmhaError(f"{QEMU} is not installed", "apt-get install qemu-system-x86")
    initrd = initramfs(k, cache)
    runs = cache / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    xfer = Path(tempfile.mkdtemp(prefix="run-", dir=str(runs)))
    t0 = time.monotonic()
    console: list[str] = []
    with sigterm_as_interrupt():
        return _boot(k, argv, progress, timeout, files, collect, initrd, xfer, t0, console)


def _boot(
    k: kmod.Kernel,
    argv: list[str],
    progress: Progress,
    timeout: float,
    files: Optional[dict[str, bytes]],
    collect: Optional[Callable[[Path], Any]],
    initrd: Path,
    xfer: Path,
    t0: float,
    console: list[str],
) -> tuple[VmRun, Any]:
    proc: Optional[subprocess.Popen[bytes]] = None
    try:
        for name, data in (files or {}).items():
            (xfer / name).write_bytes(data)
        env = " ".join(f"{a}={_q(b)}" for a, b in _guest_env(k).items())
        cmd = " ".join(_q(a.replace("{xfer}", str(xfer))) for a in argv)
        (xfer / "guest-run.sh").write_text(
            GUEST_RUN.format(mark=MARK, env=env, argv=cmd, xfer=_q(str(xfer)))
        )
        qemu = [
            QEMU, "-nodefaults", "-no-user-config", "-machine", "pc,accel=tcg",
            "-cpu", "max", "-smp", CPUS, "-m", MEMORY,
            "-kernel", str(k.vmlinuz), "-initrd", str(initrd),
            "-append", f"console=ttyS0 quiet loglevel=1 panic=-1 mitigations=off "
            f"kvmha_xfer={xfer}",
            "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            "-fsdev", f"local,id=xfer,path={xfer},security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=xfer,mount_tag=xfer",
            "-serial", "stdio", "-display", "none", "-monitor", "none", "-net", "none",
            "-no-reboot",
        ]  # fmt: skip
        progress(f"booting {k.vmlinuz.name} ({k.version}) under QEMU (TCG)")
        proc = subprocess.Popen(
            qemu, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdout is not None
        buf = b""
        deadline = t0 + timeout
        fd = proc.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KvmhaError(f"the probe under QEMU did not finish within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                console.append(line)
                if line.startswith(MARK):
                    progress(line[len(MARK) :].strip())
        proc.wait(timeout=30)
        qrc = proc.returncode
        proc = None
        if qrc != 0:
            raise KvmhaError(f"QEMU exited {qrc}: " + " | ".join(console[-5:]))
        rcfile = xfer / "rc"
        if not rcfile.exists():
            tail = " | ".join(x for x in console[-8:] if x.strip())
            raise KvmhaError(f"the guest did not report an exit status: {tail}")
        rc = int(rcfile.read_text().strip() or "1")
        result = collect(xfer) if collect else None
        return VmRun(rc, console, round(time.monotonic() - t0, 1)), result
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(xfer, ignore_errors=True)


def probe_in_vm(
    vmlinuz: Path,
    modules: Optional[Path],
    modes: list[int],
    switch: str,
    soak: float,
    failover: bool,
    progress: Progress,
) -> dict[str, Any]:
    """kvmha net probe, run inside kernel vmlinuz; the same report as a local run."""
    k = kmod.open_kernel(vmlinuz, modules)
    argv = [sys.executable, "-m", "kvmha.netcfg.guest", "probe",
            "--modes", ",".join(map(str, modes)), "--switch", switch,
            "--soak", str(soak), "--out", "{xfer}/result.json"]  # fmt: skip
    if not failover:
        argv.append("--no-failover")
    runs = len(modes) * (3 if switch == "all" else 1)
    run, report = run_in_vm(
        k, argv, progress, timeout=180 + 90 * runs,
        collect=lambda x: json.loads((x / "result.json").read_text())
        if (x / "result.json").exists() else None,
    )  # fmt: skip
    if report is None or "results" not in report:
        err = (report or {}).get("error")
        tail = " | ".join(x for x in run.console[-6:] if x.strip())
        if err:
            raise KvmhaError(f"probe under kernel {k.version}: {err}")
        raise KvmhaError(f"the probe under kernel {k.version} gave no result (rc {run.rc}): {tail}")
    out: dict[str, Any] = report
    out["vm"] = {"kernel_image": str(k.vmlinuz), "elapsed_s": run.elapsed_s}
    return out
