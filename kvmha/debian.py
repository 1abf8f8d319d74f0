"""Debian packages fetched for the lab and the network probe: downloaded with
``apt-get download`` and unpacked with ``dpkg-deb -x``; nothing is installed."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from kvmha.errors import KvmhaError
from kvmha.process import run


def package_behind(meta: str) -> str:
    """The versioned package a meta package depends on (linux-image-cloud-amd64 ->
    linux-image-6.1.0-NN-cloud-amd64)."""
    out = run(["apt-cache", "depends", meta], check=False).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:"):
            return line.split(":", 1)[1].strip()
    raise KvmhaError(f"apt does not know {meta}", "run 'apt-get update'")


def download(package: str, dest: Path) -> Path:
    """The .deb of package in dest, downloaded unless it is there already."""
    have = sorted(dest.glob(f"{package}_*.deb"))
    if have:
        return have[-1]
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=str(dest)))
    try:
        with contextlib.suppress(LookupError, PermissionError):
            shutil.chown(work, user="_apt")  # apt downloads as _apt when it can
        run(["apt-get", "download", package], cwd=str(work), timeout=900)
        debs = sorted(work.glob(f"{package}_*.deb"))
        if not debs:
            raise KvmhaError(f"apt-get download {package} gave no .deb")
        target = dest / debs[-1].name
        debs[-1].replace(target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unpack(deb: Path, dest: Path) -> None:
    run(["dpkg-deb", "-x", str(deb), str(dest)], timeout=600)
