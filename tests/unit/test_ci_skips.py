"""Skips fail in CI (tests/conftest.py): with CI=true a skip, at module level or inside a
test or fixture, becomes a failure unless CI_ALLOWED_SKIPS names it with a reason."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import conftest  # tests/conftest.py (pytest puts tests/ on sys.path)
import pytest

TESTS = Path(conftest.__file__).resolve().parent

CASES = {
    "test_module_skip.py": (
        "import pytest\n"
        "pytest.importorskip('kvmha_no_such_module')\n"
        "def test_never_collected():\n    pass\n"
    ),
    "test_runtime_skip.py": (
        "import pytest\n"
        "@pytest.fixture()\n"
        "def thing():\n    pytest.skip('no thing here')\n"
        "def test_skips_inside():\n    pytest.skip('component missing')\n"
        "def test_skips_in_its_fixture(thing):\n    pass\n"
        "def test_passes():\n    pass\n"
    ),
}


def run_pytest(tmp_path: Path, ci: str | None) -> tuple[int, str]:
    for name, text in CASES.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(TESTS)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "conftest",
         "--rootdir", str(tmp_path), "-q", "-rA", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False,
    )  # fmt: skip
    return r.returncode, r.stdout + r.stderr


def closing(out: str) -> str:
    lines = [x for x in out.splitlines() if re.search(r"\d+ (passed|failed|skipped)", x)]
    return lines[-1] if lines else out


def test_every_skip_fails_in_ci(tmp_path: Path) -> None:
    rc, out = run_pytest(tmp_path, "true")
    assert rc == 1, out
    # a skip in a fixture fails its set-up: pytest counts that as an error
    assert re.search(r"\b2 failed, 1 passed, 1 error\b", closing(out)), out
    assert "skipped" not in closing(out), out
    assert "kvmha_no_such_module" in out and "component missing" in out
    assert "no thing here" in out and "CI_ALLOWED_SKIPS" in out


def test_outside_ci_a_skip_stays_a_skip(tmp_path: Path) -> None:
    rc, out = run_pytest(tmp_path, None)
    assert rc == 0, out
    assert re.search(r"\b1 passed, 3 skipped\b", closing(out)), out


def test_allow_list_matches_only_its_own_test_and_reason() -> None:
    node = "tests/unit/test_agent_validate.py::test_bad_integer[-1-timeout]"
    assert conftest.allowed_skip(node, "no lower bound")
    assert conftest.allowed_skip(node, "libvirt missing") is None
    assert conftest.allowed_skip("tests/unit/test_agent_lifecycle.py", "no lower bound") is None


@pytest.mark.parametrize("entry", sorted(conftest.CI_ALLOWED_SKIPS))
def test_allow_list_names_a_test_file_that_exists_and_says_why(entry: tuple[str, str]) -> None:
    pattern, text = entry
    assert (TESTS.parent / pattern.split("::")[0]).is_file(), pattern
    assert text and len(conftest.CI_ALLOWED_SKIPS[entry]) > 20
