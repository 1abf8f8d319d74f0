"""Kernels for the probe: fetch Debian's, recognise a bzImage, find and load its modules.

Nothing here installs anything: ``apt-get download`` fetches the kernel package and
``dpkg-deb -x`` unpacks it into a cache directory (never under /tmp: a kernel booted by
the probe mounts a fresh /tmp and would not see it). Modules are loaded with
``finit_module(2)`` in dependency order read from each module's ``.modinfo`` section, so
neither kmod (modprobe, depmod) nor a ``modules.dep`` is needed.

``python3 -m kvmha.netcfg.kernel`` fetches the kernel (idempotent) and prints its path.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from kvmha import debian
from kvmha.errors import KvmhaError, UsageError

DEFAULT_CACHE = Path("/var/cache/kvmha/netprobe")
# The generic image: the cloud one may lack bonding.ko and 8021q.ko.
KERNEL_META_PACKAGE = "linux-image-amd64"
# Paths a booted kernel does not see from the host (it mounts fresh file systems there).
HIDDEN_IN_GUEST = ("/tmp", "/run", "/var/tmp", "/dev", "/proc", "/sys")  # noqa: S108

_SYS_FINIT_MODULE = 313  # x86_64


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A bootable kernel and the directory that holds its modules (lib/modules/VERSION)."""

    vmlinuz: Path
    modules: Path
    version: str


def hidden_in_guest(path: Path) -> bool:
    p = str(path.resolve())
    return any(p == h or p.startswith(h + "/") for h in HIDDEN_IN_GUEST)


def bzimage_version(path: Path) -> str:
    """The version string of a Linux x86 bzImage (boot protocol header), or UsageError."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x4000)
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a kernel image") from None
    except OSError as exc:
        raise UsageError(f"cannot read kernel {path}: {exc.strerror}") from None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise UsageError(
            f"{path} is not a Linux kernel image (no bzImage boot header)",
            "pass the vmlinuz file, e.g. .../boot/vmlinuz-6.1.0-56-amd64",
        )
    (ver_off,) = struct.unpack_from("<H", head, 0x20E)
    if not ver_off:
        raise UsageError(f"{path}: kernel image has no version string")
    with open(path, "rb") as f:
        f.seek(ver_off + 0x200)
        raw = f.read(256)
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    version = text.split(" ", 1)[0]
    if not version:
        raise UsageError(f"{path}: empty kernel version string")
    return version


def find_modules(vmlinuz: Path, version: str, modules: Path | None = None) -> Path:
    """lib/modules/VERSION for a kernel: given (the directory itself, or a root above it),
    beside the image (ROOT/boot/vmlinuz-V -> ROOT/lib/modules/V), or the host's."""
    candidates: list[Path] = []
    if modules is not None:
        candidates += [modules, modules / version, modules / "lib" / "modules" / version]
    else:
        root = vmlinuz.resolve().parent.parent
        candidates += [
            root / "lib" / "modules" / version,
            root / "usr" / "lib" / "modules" / version,
            vmlinuz.resolve().parent / "lib" / "modules" / version,
            Path("/lib/modules") / version,
        ]
    for c in candidates:
        if (c / "kernel").is_dir():
            return c
    where = modules if modules is not None else vmlinuz.resolve().parent.parent
    raise UsageError(
        f"no modules for kernel {version} found (looked at {where})",
        "unpack the whole kernel package, or give the directory with --modules",
    )


def open_kernel(vmlinuz: Path, modules: Path | None = None) -> Kernel:
    version = bzimage_version(vmlinuz)
    mods = find_modules(vmlinuz, version, modules)
    for p in (vmlinuz, mods):
        if hidden_in_guest(p):
            raise UsageError(
                f"{p} is under a directory the booted kernel does not see "
                f"({', '.join(HIDDEN_IN_GUEST)})",
                f"put it elsewhere, e.g. under {DEFAULT_CACHE}",
            )
    return Kernel(vmlinuz.resolve(), mods.resolve(), version)


# ---------------------------------------------------------------------------
# modules: .modinfo from the ELF file, dependency order, finit_module
# ---------------------------------------------------------------------------
def modinfo(path: Path) -> dict[str, str]:
    """key=value pairs of a module's .modinfo section (last value wins)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise KvmhaError(f"{path} is not a 64-bit ELF module")
    e_shoff = struct.unpack_from("<Q", data, 0x28)[0]
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        off = e_shoff + i * e_shentsize
        name, _typ, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, off)
        return name, offset, size

    _n, str_off, _s = section(e_shstrndx)
    out: dict[str, str] = {}
    for i in range(e_shnum):
        name, offset, size = section(i)
        end = data.index(b"\0", str_off + name)
        if data[str_off + name : end] == b".modinfo":
            for item in data[offset : offset + size].split(b"\0"):
                if b"=" in item:
                    k, v = item.split(b"=", 1)
                    out[k.decode()] = v.decode(errors="replace")
    return out


def module_index(moddir: Path) -> dict[str, Path]:
    """module name (with '_') -> .ko path, for every module under moddir/kernel."""
    index: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(moddir / "kernel"):
        for fn in files:
            if fn.endswith(".ko"):
                index[fn[:-3].replace("-", "_")] = Path(dirpath) / fn
    return index


def load_order(names: Iterable[str], index: dict[str, Path]) -> list[Path]:
    """The .ko files to load for names, each after everything it depends on."""
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        path = index.get(name)
        if path is None:
            if os.path.isdir(f"/sys/module/{name}"):
                return  # built in, or loaded already
            raise KvmhaError(f"kernel module {name} is not in the kernel's module directory")
        for dep in filter(None, modinfo(path).get("depends", "").split(",")):
            visit(dep)
        order.append(path)

    for n in names:
        visit(n)
    return order


def load_modules(
    names: Iterable[str], moddir: Path, params: dict[str, str] | None = None
) -> list[str]:
    """Load names (and what they need) from moddir with finit_module; returns what was
    loaded. Already loaded or built-in modules are fine."""
    params = params or {}
    libc = ctypes.CDLL(None, use_errno=True)
    loaded: list[str] = []
    wanted = [n for n in names if not os.path.isdir(f"/sys/module/{n}")]
    if not wanted:
        return loaded
    for path in load_order(wanted, module_index(moddir)):
        name = path.name[:-3].replace("-", "_")
        if os.path.isdir(f"/sys/module/{name}"):
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            rc = libc.syscall(_SYS_FINIT_MODULE, fd, params.get(name, "").encode(), 0)
        finally:
            os.close(fd)
        if rc != 0:
            err = ctypes.get_errno()
            if err != 17:  # EEXIST
                raise KvmhaError(f"cannot load kernel module {name}: {os.strerror(err)}")
        loaded.append(name)
    return loaded


# ---------------------------------------------------------------------------
# fetching Debian's kernel package
# ---------------------------------------------------------------------------
def kernel_package_name(meta: str = KERNEL_META_PACKAGE) -> str:
    return debian.package_behind(meta)


def ensure_kernel(cache: Path = DEFAULT_CACHE, package: str | None = None) -> Kernel:
    """Debian's generic kernel, unpacked (not installed) under cache; idempotent."""
    if hidden_in_guest(cache):
        raise UsageError(f"the kernel cache {cache} must not be under /tmp, /run or /var/tmp")
    pkg = package or kernel_package_name()
    kroot = cache / pkg
    stamp = kroot / ".kvmha-stamp.json"
    if stamp.exists():
        try:
            data = json.loads(stamp.read_text())
            k = Kernel(Path(data["vmlinuz"]), Path(data["modules"]), data["version"])
            if k.vmlinuz.exists() and (k.modules / "kernel").is_dir():
                return k
        except (ValueError, KeyError):
            pass
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=str(cache)))
    try:
        deb = debian.download(pkg, work)
        unpacked = work / "root"
        debian.unpack(deb, unpacked)
        images = sorted((unpacked / "boot").glob("vmlinuz-*"))
        if not images:
            raise KvmhaError(f"{deb.name} holds no kernel image")
        if kroot.exists():
            shutil.rmtree(kroot)
        os.replace(unpacked, kroot)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in cache.glob("linux-image-*"):  # kernels an older fetch left (400 MB each)
        if old.is_dir() and old != kroot:
            shutil.rmtree(old, ignore_errors=True)
    vmlinuz = sorted((kroot / "boot").glob("vmlinuz-*"))[-1]
    k = open_kernel(vmlinuz)
    stamp.write_text(
        json.dumps({"vmlinuz": str(k.vmlinuz), "modules": str(k.modules), "version": k.version})
    )
    return k


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cache = Path(args[0]) if args else DEFAULT_CACHE
    try:
        k = ensure_kernel(cache)
    except KvmhaError as exc:
        print(f"kvmha: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(k.vmlinuz)
    return 0


if __name__ == "__main__":
    sys.exit(main())
