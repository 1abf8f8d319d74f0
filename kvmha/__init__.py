"""kvmha: high availability for KVM guests on Pacemaker/Corosync and libvirt."""

__version__ = "0.1.0"
