#!/bin/bash
# mypy over the import package 'kvmha' as it is installed: the top-level folders agents/,
# fence/, netcfg/ and tools/ are its sub-packages (see pyproject.toml), which mypy
# cannot map by itself, so it reads them through a tree of symlinks in build/typecheck.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck/kvmha
rm -rf build/typecheck
mkdir -p "$tree"
for f in kvmha/*.py; do ln -s "../../../$f" "$tree/"; done
for sub in agents fence netcfg tools; do ln -s "../../../$sub" "$tree/$sub"; done
cd build/typecheck
exec ../../.venv/bin/mypy --config-file ../../pyproject.toml -p kvmha "$@"
