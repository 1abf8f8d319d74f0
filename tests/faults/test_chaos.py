"""A short chaos soak in CI: random faults, no violation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from integration.helpers import kvmha

from kvmha.tools.lab.lab import Lab

pytestmark = pytest.mark.lab


@pytest.mark.timeout(2400)
def test_short_soak(lab3: Lab, tmp_path: Path) -> None:
    out, png = tmp_path / "chaos.json", tmp_path / "chaos.png"
    r = kvmha(
        "lab",
        "chaos",
        "--labdir",
        str(lab3.labdir),
        "--rounds",
        "10",
        "--seed",
        "3",
        "--json-file",
        str(out),
        "--plot",
        str(png),
        timeout=3000,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    assert result["rounds"] == 10 and result["seed"] == 3
    assert sum(result["faults"].values()) == 10
    assert result["violations"] == []
    assert result["watch_samples"] >= 60
    for stats in result["recovery_s"].values():
        assert set(stats) == {"n", "min", "median", "p95", "max"}
        assert stats["max"] < result["bound_s"]
    assert png.read_bytes().startswith(b"\x89PNG")
    print(r.stdout)
