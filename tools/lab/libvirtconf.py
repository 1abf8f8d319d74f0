"""libvirt configuration of a lab host, and the lab guests' domain XML."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from kvmha.tools.lab.config import LabConfig


def libvirtd_conf(cfg: LabConfig, host: str) -> str:
    addr = cfg.host_address(host)
    return (
        "# kvmha lab host: TCP without TLS or auth, reachable only inside the lab network\n"
        "listen_tls = 0\n"
        "listen_tcp = 1\n"
        f'listen_addr = "{addr}"\n'
        'auth_tcp = "none"\n'
        'auth_unix_rw = "none"\n'
        # No SMBIOS here: without this every start picks a random UUID, and two hosts
        # with the same UUID refuse to migrate to each other.
        f'host_uuid = "{cfg.host_uuid(host)}"\n'
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
    )


def qemu_conf(cfg: LabConfig, host: str) -> str:
    addr = cfg.host_address(host)
    return (
        'user = "root"\n'
        'group = "root"\n'
        # Hosts share /sys/fs/cgroup with the machine: libvirt must not manage cgroups.
        "cgroup_controllers = [ ]\n"
        f'migration_address = "{addr}"\n'
        f'migration_host = "{addr}"\n'
        # disk leases: virtlockd refuses a second QEMU on any host for a disk in use
        'lock_manager = "lockd"\n'
    )


def qemu_lockd_conf(cfg: LabConfig) -> str:
    """virtlockd's leases for every disk, in a lockspace on the shared storage: one lease
    file per disk path, the same file for every host, held by the virtlockd of the host
    whose QEMU uses the disk (gone with that virtlockd when the host loses power)."""
    return (
        "# kvmha lab: a lease for every disk, in a lockspace every host shares\n"
        "auto_disk_leases = 1\n"
        "require_lease_for_disks = 1\n"
        f'file_lockspace_dir = "{cfg.lockspace_dir}"\n'
    )


def virtlockd_conf() -> str:
    return 'log_outputs = "3:file:/var/log/libvirt/virtlockd.log"\n'


def guest_domain_xml(cfg: LabConfig, guest: str, kernel: str, initrd: str) -> str:
    """A tiny TCG guest: direct kernel boot, 128 MiB, guest agent, NIC on the lab bridge."""
    ip = cfg.guest_address(guest)
    cmdline = f"console=ttyS0 panic=-1 quiet kvmha.name={guest} kvmha.ip={ip}/24"
    serial_log = cfg.guests_dir / f"{guest}.serial.log"
    return f"""<domain type='qemu'>
  <name>{escape(guest)}</name>
  <uuid>{cfg.guest_uuid(guest)}</uuid>
  <description>kvmha lab guest</description>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(kernel)}</kernel>
    <initrd>{escape(initrd)}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features>
    <acpi/>
    <tcg><tb-cache unit='MiB'>64</tb-cache></tcg>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <interface type='bridge'>
      <mac address='{cfg.guest_mac(guest)}'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <log file={quoteattr(str(serial_log))} append='on'/>
      <target port='0'/>
    </serial>
    <console type='pty'/>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def idle_domain_xml(name: str, uuid: str) -> str:
    """A domain with nothing to boot (no disk, no NIC): QEMU runs, SeaBIOS finds no boot
    device and halts. For tests that need copies of a domain, not a guest."""
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <uuid>{escape(uuid)}</uuid>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


DEBIAN_MEMORY_MIB = 512


def debian_domain_xml(cfg: LabConfig, guest: str, kernel: str, initrd: str) -> str:
    """A real Debian guest: direct kernel boot of the image's own kernel and initramfs,
    its qcow2 overlay on the shared base as vda, its read-only seed disk as vdb, both in
    the lab's shared image directory (so it can live-migrate); identity on the command
    line (see debimage)."""
    from kvmha.tools.lab.debimage import kernel_cmdline

    cmdline = kernel_cmdline(guest, cfg.guest_machine_id(guest), f"{cfg.guest_address(guest)}/24")
    serial_log = cfg.guests_dir / f"{guest}.serial.log"
    return f"""<domain type='qemu'>
  <name>{escape(guest)}</name>
  <uuid>{cfg.guest_uuid(guest)}</uuid>
  <description>kvmha lab guest (Debian 12)</description>
  <memory unit='MiB'>{DEBIAN_MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(kernel)}</kernel>
    <initrd>{escape(initrd)}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features>
    <acpi/>
    <tcg><tb-cache unit='MiB'>128</tb-cache></tcg>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file={quoteattr(str(cfg.guest_disk(guest)))}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file={quoteattr(str(cfg.guest_seed(guest)))}/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='bridge'>
      <mac address='{cfg.guest_mac(guest)}'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <log file={quoteattr(str(serial_log))} append='on'/>
      <target port='0'/>
    </serial>
    <console type='pty'/>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
"""
