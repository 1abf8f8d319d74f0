"""The lab's guest boot image: a Debian cloud kernel and a busybox initramfs.

Nothing is installed on the machine: the kernel and qemu-guest-agent packages are
fetched with ``apt-get download`` and unpacked into the cache directory. The initramfs
runs acpid (ACPI power button), qemu-ga (guest agent), busybox httpd on port 80 (for
health checks) and prints readiness markers on the serial console (see guest/init).
Building is idempotent: a stamp records what the image was built from.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from kvmha import debian
from kvmha.errors import KvmhaError
from kvmha.process import run

DEFAULT_CACHE = Path("/var/cache/kvmha/image")
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = "/bin/busybox"
# In dependency order: a module is loaded after everything it needs.
MODULES = (
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/char/virtio_console.ko",
    "drivers/net/virtio_net.ko",
    "drivers/acpi/button.ko",
    "drivers/input/evdev.ko",
)
GUEST_FILES = ("init", "PWRF", "shutdown")


@dataclasses.dataclass(frozen=True)
class Image:
    kernel: Path
    initrd: Path
    kernel_version: str


def _guest_file(name: str) -> bytes:
    return (resources.files("kvmha.tools.lab") / "guest" / name).read_bytes()


def _recipe_digest(kernel_package: str) -> str:
    h = hashlib.sha256(kernel_package.encode())
    for name in GUEST_FILES:
        h.update(_guest_file(name))
    h.update("\n".join(MODULES).encode())
    return h.hexdigest()[:16]


def kernel_package_name() -> str:
    """The versioned cloud kernel package that the meta package points to."""
    return debian.package_behind(KERNEL_META_PACKAGE)


def ensure_image(cache: Path = DEFAULT_CACHE) -> Image:
    """Build the image unless the cache already holds one built from the same recipe."""
    kpkg = kernel_package_name()
    digest = _recipe_digest(kpkg)
    stamp = cache / "stamp.json"
    if stamp.exists():
        try:
            data = json.loads(stamp.read_text())
        except ValueError:
            data = {}
        if data.get("digest") == digest:
            img = Image(Path(data["kernel"]), Path(data["initrd"]), data["kernel_version"])
            if img.kernel.exists() and img.initrd.exists():
                return img
    return _build(cache, kpkg, digest)


def _copy_elf_with_libs(binary: Path, root: Path, target: str) -> None:
    """Copy binary into root at target, with the ELF interpreter and its shared libraries."""
    dst = root / target.lstrip("/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, dst)
    out = run(["ldd", str(binary)]).stdout
    for line in out.splitlines():
        parts = line.split()
        lib = None
        if "=>" in parts:
            idx = parts.index("=>")
            if idx + 1 < len(parts) and parts[idx + 1].startswith("/"):
                lib = parts[idx + 1]
        elif parts and parts[0].startswith("/"):
            lib = parts[0]
        if lib and os.path.exists(lib):
            d = root / lib.lstrip("/")
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(lib), d)


def _build(cache: Path, kpkg: str, digest: str) -> Image:
    if not os.access(BUSYBOX, os.X_OK):
        raise KvmhaError("busybox is missing", "apt-get install busybox-static")
    debs = {p: debian.download(p, cache / "debs") for p in (kpkg, "qemu-guest-agent")}
    work = Path(tempfile.mkdtemp(prefix="build-", dir=str(cache)))
    try:
        kroot = work / "kroot"
        debian.unpack(debs[kpkg], kroot)
        qroot = work / "qga"
        debian.unpack(debs["qemu-guest-agent"], qroot)
        kernels = sorted(glob.glob(str(kroot / "boot" / "vmlinuz-*")))
        if not kernels:
            raise KvmhaError(f"{debs[kpkg].name} holds no kernel")
        kernel_src = Path(kernels[-1])
        kver = kernel_src.name[len("vmlinuz-") :]
        root = work / "root"
        for d in (
            "bin",
            "sbin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "var/run",
            "var/log",
            "etc/acpi/PWRF",
            "lib/modules",
            "usr/sbin",
        ):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        os.symlink("busybox", root / "bin" / "sh")
        moddir = kroot / "lib" / "modules" / kver / "kernel"
        for mod in MODULES:
            src = moddir / mod
            if not src.exists():
                raise KvmhaError(f"kernel {kver} has no module {mod}")
            shutil.copy2(src, root / "lib" / "modules" / src.name)
        _copy_elf_with_libs(qroot / "usr" / "sbin" / "qemu-ga", root, "/usr/sbin/qemu-ga")
        for name, target in (
            ("init", "init"),
            ("PWRF", "etc/acpi/PWRF/00000080"),
            ("shutdown", "sbin/shutdown"),
        ):
            p = root / target
            p.write_bytes(_guest_file(name))
            p.chmod(0o755)
        listing = run(["find", "."], cwd=str(root)).stdout
        cpio = run_bytes(["cpio", "--quiet", "-o", "-H", "newc"], listing, cwd=str(root))
        cache.mkdir(parents=True, exist_ok=True)
        initrd = cache / "initrd.img"
        kernel = cache / "vmlinuz"
        tmp_initrd = cache / "initrd.img.tmp"
        with gzip.open(tmp_initrd, "wb", compresslevel=1) as f:
            f.write(cpio)
        os.replace(tmp_initrd, initrd)
        shutil.copy2(kernel_src, kernel)
        for p in (kernel, initrd):
            p.chmod(0o644)
        img = Image(kernel, initrd, kver)
        (cache / "stamp.json").write_text(
            json.dumps(
                {
                    "digest": digest,
                    "kernel": str(kernel),
                    "initrd": str(initrd),
                    "kernel_version": kver,
                },
                indent=1,
            )
        )
        return img
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_bytes(argv: list[str], stdin_text: str, cwd: str) -> bytes:
    """Run argv with text on stdin and return its binary stdout (cpio writes an archive)."""
    proc = subprocess.run(
        argv, input=stdin_text.encode(), capture_output=True, cwd=cwd, timeout=300, check=False
    )
    if proc.returncode != 0:
        raise KvmhaError(f"{argv[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


if __name__ == "__main__":
    import sys

    try:
        image = ensure_image(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE)
    except KvmhaError as exc:
        sys.exit(f"kvmha image: {exc}")
    print(f"kernel={image.kernel} ({image.kernel_version}) initrd={image.initrd}")
