#!/bin/bash
# Mutation testing of the safety-critical code (see scripts/mutation.py and docs/testing.md):
#   scripts/mutation.sh [TARGET...] | --list | --count | --report | --retest | --resume
# Not part of every CI run (it takes long: docs/testing.md has the figures); as root on a
# machine set up by scripts/setup.sh.
# Mutants never touch the real installation or the worktree: the run happens in a private
# mount namespace, on a snapshot of the worktree (tracked and new files, as they are now),
# installed into a copy of the site directory bind-mounted over the real one. An interrupted run leaves
# nothing behind, the worktree can change meanwhile, and runs of other targets can go side
# by side. Results stay in build/mutation.
# The tool lives in its own venv (.venv-mutation), pinned by scripts/mutation-requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=$PWD
[ "$(id -u)" = 0 ] || { echo "mutation: run as root (it mounts a copy of kvmha)" >&2; exit 1; }
[ -x .venv/bin/pytest ] || { echo "mutation: run scripts/setup.sh first" >&2; exit 1; }
if [ -z "${KVMHA_MUTATION_NS:-}" ]; then
  export KVMHA_MUTATION_NS=1
  exec unshare -m --propagation private -- "$0" "$@"
fi
VENV=$TOP/.venv-mutation
REQ=scripts/mutation-requirements.txt
if [ ! -x "$VENV/bin/cosmic-ray" ] || ! cmp -s $REQ "$VENV/.requirements"; then
  echo "mutation: creating $VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r $REQ 2>&1 | grep -v '^WARNING: Location' || true
  cp $REQ "$VENV/.requirements"
fi
pkg=$(/usr/bin/python3 -I -c 'import kvmha, os; print(os.path.dirname(kvmha.__file__))')
site=$(dirname "$pkg")
mkdir -p build/mutation
snap=$(mktemp -d "$TOP/build/mutation/tree.XXXXXX")
copy=$(mktemp -d "$TOP/build/mutation/site.XXXXXX")
trap 'umount "$site" 2>/dev/null || true; rm -rf "$copy" "$snap"' EXIT
git ls-files -z --cached --others --exclude-standard \
  | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$snap"
ln -s "$TOP/.venv" "$snap/.venv"
# a copy of the whole site directory (mounted over the directory itself, not the package:
# a pip reinstall elsewhere renames the package directory, and a mount on it would follow)
# whose kvmha package is the snapshot's, as scripts/setup.sh installs it (pyproject.toml's
# package-dir)
cp -a "$site/." "$copy/"
rm -rf "$copy/kvmha"
mkdir "$copy/kvmha"
cp "$snap"/kvmha/*.py "$copy/kvmha/"
for sub in agents fence netcfg tools; do cp -r "$snap/$sub" "$copy/kvmha/$sub"; done
mount --bind "$copy" "$site"
cd "$snap"
export KVMHA_MUTATION_OUT=$TOP/build/mutation KVMHA_MUTATION_COPY=$copy
"$VENV/bin/python" scripts/mutation.py "$@"
