"""The lab's real guest image: a Debian 12 root file system built from Debian packages.

``mmdebstrap`` builds the root file system from the machine's apt sources (no loop
mounts, no chroot of our own); it is cached as a tarball keyed on the package list and
the kernel version (the slow step, about 70 s). The disk image is made from it with
``mkfs.ext4 -d`` (no loop mount either) after the lab's own files are laid in: that
step is keyed on the whole recipe (packages, files, fence agent), so a change to
fence_kvmha costs seconds, not a new bootstrap.

Two variants, because Debian's ``pacemaker`` and ``pacemaker-remote`` conflict:
``full`` (corosync + pacemaker: a guest-cluster member) and ``remote``
(pacemaker-remote: a guest node of the host cluster).

What a guest takes from the lab at boot, without loop mounts (see ``seed_files``):
the kernel command line (``systemd.hostname=``, ``systemd.machine_id=``, ``kvmha.ip=``)
and a small read-only seed disk (serial ``kvmha-seed``) whose ``files/`` tree is copied
over ``/`` and whose ``units`` file names the units to start (corosync, pacemaker,
nginx, pacemaker_remote). ``kvmha-seed.service`` in the image does both, before the
cluster stack starts.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kvmha import debian
from kvmha.errors import KvmhaError
from kvmha.process import run

DEFAULT_CACHE = Path("/var/cache/kvmha/debian")
SUITE = "bookworm"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
DISK_SIZE = "1600M"
COMMON_PACKAGES = (
    "systemd-sysv",
    # the system bus: Pacemaker's systemd: resources talk to systemd over it. systemd only
    # recommends dbus (and mmdebstrap installs no recommends); pacemaker pulls it in, but
    # pacemaker-remote does not, and a guest node's systemd:nginx failed "No DBus connection"
    "dbus",
    "udev",
    "kmod",
    "iproute2",
    "iputils-ping",
    "procps",
    "python3",  # fence_kvmha (standard library only)
    "qemu-guest-agent",
    "resource-agents",
    "nginx-light",
    "initramfs-tools",
    KERNEL_META_PACKAGE,
)
VARIANT_PACKAGES = {
    # pcs is left out: pcsd (ruby + python) is heavy under TCG and the lab configures
    # the guest cluster with cibadmin, as it does the host cluster
    "full": ("corosync", "pacemaker", "pacemaker-cli-utils"),
    "remote": ("pacemaker-remote", "pacemaker-cli-utils"),
}
# Units a lab guest does not need; masked so that nothing pulls them in.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "logrotate.timer",
    "man-db.timer",
    "getty@tty1.service",
    "systemd-timesyncd.service",
    "pcsd.service",
    "pcsd-ruby.service",
    "logd.service",  # cluster-glue's ha_logd: pacemaker logs to the journal
)
# Installed but started only when the seed asks for them.
DISABLED_UNITS = (
    "corosync.service",
    "pacemaker.service",
    "nginx.service",
    "pacemaker_remote.service",
)
READY_MARKER = "KVMHA-GUEST-READY"

SEED_SCRIPT = r"""#!/bin/sh
# kvmha lab guest: identity and configuration from the kernel command line and the
# read-only seed disk (serial kvmha-seed); written by kvmha.tools.lab.debimage
IP=
for a in $(cat /proc/cmdline); do
    case "$a" in kvmha.ip=*) IP="${a#kvmha.ip=}" ;; esac
done
ip link set lo up
i=0
while ! ip link show eth0 >/dev/null 2>&1 && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
ip link set eth0 up
[ -n "$IP" ] && ip addr add "$IP" dev eth0
dev=/dev/disk/by-label/kvmha-seed
i=0
while [ ! -e $dev ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
[ -e $dev ] || { echo "kvmha-seed: no seed disk"; exit 0; }
mkdir -p /run/kvmha-seed
mount -o ro $dev /run/kvmha-seed || exit 1
[ -d /run/kvmha-seed/files ] && cp -a /run/kvmha-seed/files/. /
if [ -f /run/kvmha-seed/units ]; then
    for u in $(cat /run/kvmha-seed/units); do systemctl --no-block start "$u"; done
fi
exit 0
"""

SEED_UNIT = """[Unit]
Description=kvmha lab guest identity and seed
DefaultDependencies=no
After=systemd-udevd.service systemd-udev-trigger.service local-fs.target
Before=network.target corosync.service pacemaker.service pacemaker_remote.service nginx.service
Wants=systemd-udev-trigger.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/kvmha-seed
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

READY_UNIT = f"""[Unit]
Description=kvmha lab guest readiness marker on the serial console
After=kvmha-seed.service multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo {READY_MARKER} > /dev/ttyS0'

[Install]
WantedBy=multi-user.target
"""

# Fewer writes and less noise under TCG.
JOURNALD_CONF = "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\nForwardToConsole=no\n"


Say = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


@dataclasses.dataclass(frozen=True)
class DebImage:
    variant: str
    disk: Path  # raw ext4 root file system
    kernel: Path
    initrd: Path
    kernel_version: str
    digest: str


def _fence_agent_script() -> bytes:
    """fence_kvmha as docs/install.md tells a guest admin to install it: the agent
    module alone (standard library only) behind a python3 shebang (as the RPM builds it)."""
    from importlib import resources

    src = (resources.files("kvmha.fence") / "agent.py").read_bytes()
    return b"#!/usr/bin/python3\n" + src


def packages(variant: str) -> list[str]:
    if variant not in VARIANT_PACKAGES:
        raise KvmhaError(f"unknown image variant {variant!r}", "use full or remote")
    return sorted({*COMMON_PACKAGES, *VARIANT_PACKAGES[variant]})


def _rootfs_digest(variant: str, kpkg: str) -> str:
    h = hashlib.sha256(f"{SUITE}\n{kpkg}\n".encode())
    h.update("\n".join(packages(variant)).encode())
    return h.hexdigest()[:16]


FSTAB = "LABEL=kvmha-root / ext4 defaults,noatime 0 1\n"
SEED_LABEL = "kvmha-seed"


def kernel_cmdline(hostname: str, machine_id: str, address: str) -> str:
    """The identity a guest takes from its kernel command line (see kvmha-seed)."""
    return (
        "root=LABEL=kvmha-root rw console=ttyS0 panic=-1 net.ifnames=0 quiet "
        f"systemd.hostname={hostname} systemd.machine_id={machine_id} kvmha.ip={address}"
    )


def _image_digest(rootfs_digest: str) -> str:
    h = hashlib.sha256(rootfs_digest.encode())
    h.update(FSTAB.encode())
    for part in (
        SEED_SCRIPT,
        SEED_UNIT,
        READY_UNIT,
        JOURNALD_CONF,
        DISK_SIZE,
        "\n".join(MASKED_UNITS),
        "\n".join(DISABLED_UNITS),
    ):
        h.update(part.encode())
    h.update(_fence_agent_script())
    return h.hexdigest()[:16]


def ensure_image(variant: str = "full", cache: Path = DEFAULT_CACHE, say: Say = _print) -> DebImage:
    """The image of variant, built unless the cache holds one of the same recipe."""
    kpkg = debian.package_behind(KERNEL_META_PACKAGE)
    rdigest = _rootfs_digest(variant, kpkg)
    digest = _image_digest(rdigest)
    vdir = cache / variant
    stamp = vdir / "stamp.json"
    try:
        data = json.loads(stamp.read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    if data.get("digest") == digest:
        img = DebImage(
            variant,
            Path(data["disk"]),
            Path(data["kernel"]),
            Path(data["initrd"]),
            data["kernel_version"],
            digest,
        )
        if img.disk.exists() and img.kernel.exists() and img.initrd.exists():
            return img
    return _build(variant, vdir, rdigest, digest, say)


def _rootfs_tar(variant: str, vdir: Path, rdigest: str, say: Say) -> Path:
    tar = vdir / f"rootfs-{rdigest}.tar"
    if tar.exists():
        return tar
    if not shutil.which("mmdebstrap"):
        raise KvmhaError("mmdebstrap is missing", "apt-get install mmdebstrap (scripts/setup.sh)")
    for old in vdir.glob("rootfs-*.tar"):
        old.unlink()
    tmp = vdir / f".rootfs-{rdigest}.tar.tmp"
    say(f"debimage: mmdebstrap {SUITE} ({variant}: {len(packages(variant))} packages)")
    t0 = time.monotonic()
    run(
        [
            "mmdebstrap",
            "--quiet",
            "--mode=root",
            "--variant=apt",
            "--format=tar",
            f"--include={','.join(packages(variant))}",
            # no documentation, no locales: smaller and faster to unpack
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-include=/usr/share/locale/locale.alias",
            SUITE,
            str(tmp),
        ],
        timeout=1800,
    )
    os.replace(tmp, tar)
    size = tar.stat().st_size >> 20
    say(f"debimage: root file system in {time.monotonic() - t0:.0f} s ({size} MiB)")
    return tar


def _systemctl_root(root: Path, *args: str) -> None:
    run(["systemctl", f"--root={root}", *args], check=False, timeout=60)


def customize(root: Path) -> None:
    """The lab's files in an unpacked root file system."""
    (root / "etc/fstab").write_text(FSTAB)
    (root / "etc/hostname").write_text("")  # systemd.hostname= on the command line
    (root / "etc/machine-id").write_text("")  # systemd.machine_id= on the command line
    (root / "var/lib/dbus").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # Debian's sample single-node config would start a cluster of its own
    (root / "etc/corosync/corosync.conf").unlink(missing_ok=True)
    sbin = root / "usr/local/sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    (sbin / "kvmha-seed").write_text(SEED_SCRIPT)
    (sbin / "kvmha-seed").chmod(0o755)
    units = root / "etc/systemd/system"
    (units / "kvmha-seed.service").write_text(SEED_UNIT)
    (units / "kvmha-ready.service").write_text(READY_UNIT)
    jd = root / "etc/systemd/journald.conf.d"
    jd.mkdir(parents=True, exist_ok=True)
    (jd / "kvmha-lab.conf").write_text(JOURNALD_CONF)
    fence = root / "usr/sbin/fence_kvmha"
    fence.write_bytes(_fence_agent_script())
    fence.chmod(0o755)
    www = root / "var/www/html"
    www.mkdir(parents=True, exist_ok=True)
    (www / "health").write_text("ok\n")
    _systemctl_root(root, "disable", *DISABLED_UNITS)
    _systemctl_root(root, "mask", *MASKED_UNITS)
    _systemctl_root(root, "enable", "kvmha-seed.service", "kvmha-ready.service")
    (root / "etc/systemd/system/serial-getty@ttyS0.service.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf").write_text(
        "[Service]\nExecStart=\n"
        "ExecStart=-/sbin/agetty --autologin root --noclear %I 115200 linux\n"
    )


def _build(variant: str, vdir: Path, rdigest: str, digest: str, say: Say) -> DebImage:
    vdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    tar = _rootfs_tar(variant, vdir, rdigest, say)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=str(vdir)))
    try:
        root = work / "root"
        root.mkdir()
        run(["tar", "-C", str(root), "--xattrs", "--numeric-owner", "-xpf", str(tar)], timeout=600)
        kernels = sorted(glob.glob(str(root / "boot/vmlinuz-*")))
        initrds = sorted(glob.glob(str(root / "boot/initrd.img-*")))
        if not kernels or not initrds:
            raise KvmhaError(f"the {variant} root file system holds no kernel or initramfs")
        kver = Path(kernels[-1]).name[len("vmlinuz-") :]
        customize(root)
        disk_tmp = vdir / "disk.img.tmp"
        disk_tmp.unlink(missing_ok=True)
        run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "kvmha-root",
                "-d",
                str(root),
                str(disk_tmp),
                DISK_SIZE,
            ],
            timeout=600,
        )
        kernel, initrd, disk = vdir / "vmlinuz", vdir / "initrd.img", vdir / "disk.img"
        shutil.copy2(kernels[-1], kernel)
        shutil.copy2(initrds[-1], initrd)
        disk_tmp.chmod(0o444)  # the shared base: overlays only, never written
        os.replace(disk_tmp, disk)  # labs hard-link the old inode: they keep their base
        stamp = {
            "digest": digest,
            "variant": variant,
            "disk": str(disk),
            "kernel": str(kernel),
            "initrd": str(initrd),
            "kernel_version": kver,
            "packages": packages(variant),
            "built_s": round(time.monotonic() - t0, 1),
        }
        (vdir / "stamp.json").write_text(json.dumps(stamp, indent=1) + "\n")
        du = run(["du", "-sm", str(root)], check=False, timeout=120).stdout.split()
        used = int(du[0]) if du else 0
        say(f"debimage: {variant} image built in {time.monotonic() - t0:.0f} s ({used} MiB used)")
        return DebImage(variant, disk, kernel, initrd, kver, digest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_seed(path: Path, files: dict[str, tuple[bytes, int]], units: list[str]) -> None:
    """A guest's read-only seed disk: files (path in the guest -> content, mode) and the
    units its kvmha-seed.service starts. ext4 made with mkfs -d: no loop mount."""
    work = Path(tempfile.mkdtemp(prefix=".seed-", dir=str(path.parent)))
    try:
        for name, (content, mode) in files.items():
            f = work / "files" / name.lstrip("/")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(content)
            f.chmod(mode)
        (work / "units").write_text("".join(f"{u}\n" for u in units))
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        run(["mkfs.ext4", "-q", "-F", "-L", SEED_LABEL, "-d", str(work), str(tmp), "8M"])
        os.replace(tmp, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_overlay(base: Path, overlay: Path) -> None:
    """The guest's own writable disk: a qcow2 overlay whose backing file is the base."""
    overlay.unlink(missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(overlay)])


def main(argv: list[str]) -> int:
    variants = argv or ["full"]
    try:
        for v in variants:
            img = ensure_image(v)
            print(f"{v}: disk={img.disk} kernel={img.kernel} ({img.kernel_version})", flush=True)
    except KvmhaError as exc:
        print(f"kvmha debimage: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
