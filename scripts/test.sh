#!/bin/bash
# The whole test suite, on a fresh Debian 12 machine as root: set-up, lint, types,
# unit tests, then the integration tests against real labs (corosync, pacemaker,
# libvirtd, QEMU in namespaces). .ci/run calls exactly this.
# Extra arguments go to pytest (e.g. scripts/test.sh -k lab3).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
PY=.venv/bin
echo "== ruff"
$PY/ruff check .
$PY/ruff format --check .
echo "== mypy"
./scripts/mypy.sh
echo "== pytest"
# unit tests first (seconds), then the labs; -p no:cacheprovider keeps the tree clean
$PY/pytest -p no:cacheprovider --timeout=900 tests/unit "$@"
# -m "not heavy": the real-guest fault tests (docs/guests.md) run on demand, not in CI
$PY/pytest -p no:cacheprovider --timeout=900 -m "not heavy" tests/integration tests/faults "$@"
