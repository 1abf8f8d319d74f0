#!/bin/bash
# Mutation testing of the safety-critical code (see scripts/mutation.py and docs/testing.md):
#   scripts/mutation.sh [TARGET...] | --list | --count | --report
# Not part of every CI run (it takes long: docs/testing.md has the figures); as root on a
# machine set up by scripts/setup.sh, or on a shared development machine through
#   kvmha-dev run scripts/mutation.sh
# Mutants never touch the real installation: the run happens in a private mount namespace
# in which a throwaway copy of the installed kvmha package is bind-mounted over it, so
# an interrupted run leaves nothing behind and two runs (other targets) can go side by side.
# The tool lives in its own venv (.venv-mutation), pinned by scripts/mutation-requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "mutation: run as root (it mounts a copy of kvmha)" >&2; exit 1; }
[ -x .venv/bin/pytest ] || { echo "mutation: run scripts/setup.sh first" >&2; exit 1; }
if [ -z "${KVMHA_MUTATION_NS:-}" ]; then
  export KVMHA_MUTATION_NS=1
  exec unshare -m --propagation private -- "$0" "$@"
fi
VENV=.venv-mutation
REQ=scripts/mutation-requirements.txt
if [ ! -x $VENV/bin/cosmic-ray ] || ! cmp -s $REQ $VENV/.requirements; then
  echo "mutation: creating $VENV"
  /usr/bin/python3 -m venv $VENV
  $VENV/bin/pip install -q --disable-pip-version-check -r $REQ 2>&1 | grep -v '^WARNING: Location' || true
  cp $REQ $VENV/.requirements
fi
pkg=$(/usr/bin/python3 -I -c 'import kvmha, os; print(os.path.dirname(kvmha.__file__))')
mkdir -p build/mutation
copy=$(mktemp -d "$PWD/build/mutation/site.XXXXXX")
trap 'umount "$pkg" 2>/dev/null || true; rm -rf "$copy"' EXIT
cp -a "$pkg/." "$copy/"
mount --bind "$copy" "$pkg"
$VENV/bin/python scripts/mutation.py "$@"
