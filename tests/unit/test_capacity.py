"""Hosts' capacity read from libvirt's node info through kvmha.virt (the test driver)."""

from __future__ import annotations

import pytest

from kvmha import capacity
from kvmha.errors import KvmhaError


def test_node_info_comes_from_libvirt() -> None:
    cpus, memory_mib = capacity.libvirt_node_info("test:///default", 10)
    # the test driver's fixed node (libvirt's test driver): 16 CPUs, 3 GiB
    assert (cpus, memory_mib) == (16, 3072)


def test_an_unreachable_libvirt_is_an_error_naming_the_uri() -> None:
    with pytest.raises(KvmhaError, match="qemu:///system\\?socket=/nonexistent"):
        capacity.libvirt_node_info("qemu:///system?socket=/nonexistent/sock", 5)
