#!/bin/bash
# The demo, on a fresh Debian 12 machine as root: set-up, then a 3-host lab with 3
# guests under Pacemaker; a host that runs a guest loses power; prints the timeline.
# The lab stays up afterwards ('kvmha lab status', 'kvmha lab down').
# Extra arguments go to 'kvmha lab demo' (e.g. --agent Guest, --json-file FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >&2
exec /usr/local/bin/kvmha lab demo "$@"
