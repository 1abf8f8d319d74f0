#!/bin/bash
# One idempotent set-up step for a Debian 12 machine, as root; used by scripts/demo.sh,
# scripts/test.sh and CI. Quick when everything is already there.
#  - Debian packages (cluster stack, libvirt + QEMU, python3 libraries, build tools)
#  - the libvirt-qemu user libvirt needs even when QEMU runs as root
#  - kvmha installed (editable) for /usr/bin/python3, as the agents run under it
#  - the agents' launchers in their system paths
#  - a venv (.venv, from /usr/bin/python3 with system site packages) with the test tools
#  - the lab guest's boot image (/var/cache/kvmha/image)
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=$PWD
[ "$(id -u)" = 0 ] || { echo "setup: run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
  pacemaker pacemaker-cli-utils corosync pcs resource-agents fence-agents
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
  busybox-static cpio iproute2 util-linux procps libxml2-utils
  rpm rpmlint make python3-build python3-wheel python3-matplotlib
  fence-virt fence-virtd
  mmdebstrap qemu-utils
  python3 python3-venv python3-pip python3-setuptools
  python3-libvirt python3-pyroute2 python3-dbus python3-click dbus-daemon python3-gi
  cockpit-ws cockpit-bridge cockpit-system chromium chromium-driver python3-selenium
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get -q update
  apt-get -q -o DPkg::Lock::Timeout=900 install -y --no-install-recommends "${missing[@]}"
fi
# the image builder needs Debian's package lists (apt-get download of the kernel)
[ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v -e lock -e partial -e auxfiles)" ] || apt-get -q update

# libvirt's QEMU driver looks this user up before it reads qemu.conf (user = "root")
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || \
  useradd -r -g kvm -G libvirt-qemu -d /var/lib/libvirt -M -s /usr/sbin/nologin libvirt-qemu

# kvmha for /usr/bin/python3, installed like a package (the agents run under it, and an
# editable install's import hook costs every agent run ~15 ms); reinstalled whenever the
# source changed
stamp_file=/usr/local/lib/kvmha-install.stamp
stamp="$TOP $(find kvmha agents fence netcfg tools pyproject.toml -type f \
  \( -name '*.py' -o -name pyproject.toml -o -path '*/guest/*' \) -print0 | sort -z \
  | xargs -0 sha256sum | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ] || ! /usr/bin/python3 -I -c 'import kvmha.tools' 2>/dev/null; then
  echo "setup: installing kvmha for /usr/bin/python3"
  /usr/bin/python3 -m pip install -q --root-user-action=ignore --break-system-packages \
    --no-build-isolation --no-deps --force-reinstall "$TOP" 2>&1 | grep -v '^WARNING: Location' || true
  rm -rf "$TOP/build/lib" "$TOP"/*.egg-info
  /usr/bin/python3 -I -c 'import kvmha.tools.lab' || { echo "setup: kvmha did not install" >&2; exit 1; }
  echo "$stamp" > "$stamp_file"
fi

# launchers in the paths Pacemaker looks in
install -d -m 0755 /usr/lib/ocf/resource.d/kvmha
[ -f agents/Guest ] && install -m 0755 agents/Guest /usr/lib/ocf/resource.d/kvmha/Guest
install -m 0755 tools/bin/fence_kvmhalab /usr/sbin/fence_kvmhalab
install -m 0755 fence/fence_kvmha /usr/sbin/fence_kvmha
install -m 0755 fence/kvmha-fence-listener /usr/sbin/kvmha-fence-listener
# the web console (cockpit-kvmha): a Cockpit package, served by every host's cockpit-ws
rm -rf /usr/share/cockpit/kvmha && install -d -m 0755 /usr/share/cockpit/kvmha
install -m 0644 tools/cockpit/* /usr/share/cockpit/kvmha/

# test tools
if [ ! -x .venv/bin/pytest ] || ! cmp -s requirements-dev.txt .venv/.requirements-dev.txt; then
  echo "setup: creating .venv with the test tools"
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  cp requirements-dev.txt .venv/.requirements-dev.txt
fi

/usr/bin/python3 -I -m kvmha.tools.lab.image
# the kernel 'kvmha net probe --kernel' boots in its tests: Debian's generic kernel has
# the bonding driver this machine's lacks (unpacked, not installed)
/usr/bin/python3 -I -m kvmha.netcfg.kernel
echo "setup: done"
