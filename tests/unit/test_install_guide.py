"""docs/install.md's lab steps: found, expanded, and carried by the installed package."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmha.errors import KvmhaError
from kvmha.tools.lab import guide

REPO = Path(__file__).resolve().parents[2]
GUIDE = (REPO / "docs" / "install.md").read_text()


def test_installed_guide_is_this_checkouts() -> None:
    assert guide.guide_text() == GUIDE


def test_the_guides_steps() -> None:
    found = guide.steps(GUIDE)
    assert found["host-init"] == ["kvmha fence init"]
    assert set(found) == {"host-init", "key-create", "guest-stonith"}
    argv = guide.commands(
        "key-create",
        {"GUEST_CLUSTER": "web", "GUEST_DOMAINS": "a,b", "GUEST_KEY_COPY": "/tmp/x y.key"},
        GUIDE,
    )
    assert argv == [
        ["kvmha", "fence", "key", "create", "web", "--domains", "a,b", "--out", "/tmp/x y.key"]
    ]


def test_parsing_rules() -> None:
    text = (
        "```sh kvmha-lab=s\n# a comment\nkvmha a \\\n  --b ${X}\n\nkvmha c\n```\n"
        "```sh\nkvmha not-a-step\n```\n```sh kvmha-lab=s\nkvmha d\n```\n"
    )
    assert guide.steps(text) == {"s": ["kvmha a --b ${X}", "kvmha c", "kvmha d"]}
    assert guide.commands("s", {"X": "1; rm -rf /"}, text)[0] == [
        "kvmha",
        "a",
        "--b",
        "1; rm -rf /",
    ]
    with pytest.raises(KvmhaError, match=r"\$X"):
        guide.commands("s", {}, text)
    with pytest.raises(KvmhaError, match="no step"):
        guide.commands("nope", {}, text)
    with pytest.raises(KvmhaError, match="only kvmha commands"):
        guide.lab_argv(["rm", "-rf", "/"])
