"""What a lab is: its directory, its size, and the names and addresses derived from them.

A lab is described by ``<labdir>/lab.json`` and nothing else; every other name (network
namespaces, addresses, host directories) is derived here, so there is one place to look.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from pathlib import Path

from kvmha.errors import KvmhaError, UsageError

DEFAULT_LABDIR = Path("/var/lib/kvmha-lab")
MAX_HOSTS = 5
MAX_GUESTS = 9
SUBNET = "10.77.0"  # exists only inside the lab's own network namespaces
# debian-remote: the remote variant (pacemaker-remote), each guest a Pacemaker Remote
# guest node of the host cluster (meta remote-node on its ocf:kvmha:Guest resource)
GUEST_IMAGES = ("busybox", "debian", "debian-remote")
# Corosync inside TCG guests on a loaded 2-core machine: a vCPU can be starved for
# seconds, so the guest cluster's token is generous (consensus defaults to 1.2 x token).
GUEST_CLUSTER_TOKEN_MS = 10000
GUEST_CLUSTER_VIP_INDEX = 99  # the guest cluster's service address, 10.77.0.99
AGENTS = {
    "Guest": "ocf:kvmha:Guest",
    "VirtualDomain": "ocf:heartbeat:VirtualDomain",
}
# Paths that are replaced inside every host: the labdir must not live below them.
HOST_PRIVATE_PATHS = (
    "/etc/corosync",
    "/etc/libvirt",
    "/etc/kvmha",
    "/var/lib/pacemaker",
    "/var/lib/corosync",
    "/var/lib/libvirt",
    "/var/log/pacemaker",
    "/var/log/corosync",
    "/var/log/libvirt",
    "/var/cache/libvirt",
    "/run",
    "/var/run",
    "/tmp",  # noqa: S108 (a mount point)
    "/dev/shm",  # noqa: S108 (a mount point)
)


@dataclasses.dataclass(frozen=True)
class LabConfig:
    labdir: Path
    hosts: int
    guests: int
    agent: str = "Guest"
    token_ms: int = 1000
    guest_image: str = "busybox"
    guest_cluster: bool = False

    def __post_init__(self) -> None:
        if self.guest_image not in GUEST_IMAGES:
            raise UsageError(
                f"unknown guest image {self.guest_image!r}", f"use one of {', '.join(GUEST_IMAGES)}"
            )
        if self.guest_cluster and (self.guest_image != "debian" or self.guests < 2):
            raise UsageError(
                "a guest cluster needs real guests",
                "use --guest-image debian with --guests 2 or more",
            )
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise UsageError(f"--hosts {self.hosts} is out of range", f"use 1 to {MAX_HOSTS}")
        if not 0 <= self.guests <= MAX_GUESTS:
            raise UsageError(f"--guests {self.guests} is out of range", f"use 0 to {MAX_GUESTS}")
        if self.agent not in AGENTS:
            raise UsageError(f"unknown agent {self.agent!r}", f"use one of {', '.join(AGENTS)}")
        if not 200 <= self.token_ms <= 30000:
            raise UsageError(f"token {self.token_ms} ms is out of range", "use 200 to 30000")

    # ---- names -------------------------------------------------------------
    @property
    def tag(self) -> str:
        """Short prefix for this lab's namespaces, unique per labdir (several labs can coexist)."""
        return "kl" + hashlib.sha256(str(self.labdir).encode()).hexdigest()[:6]

    @property
    def switch_netns(self) -> str:
        return f"{self.tag}-sw"

    def host_names(self) -> list[str]:
        return [f"host{i}" for i in range(1, self.hosts + 1)]

    def guest_names(self) -> list[str]:
        return [f"guest{i}" for i in range(1, self.guests + 1)]

    def host_index(self, host: str) -> int:
        if host in self.host_names():
            return int(host[4:])
        raise UsageError(f"unknown host {host!r}", f"this lab has {', '.join(self.host_names())}")

    def host_netns(self, host: str) -> str:
        return f"{self.tag}-h{self.host_index(host)}"

    def switch_port(self, host: str) -> str:
        """The host's cable, as seen from the switch: down = the host is isolated."""
        return f"port{self.host_index(host)}"

    def host_address(self, host: str) -> str:
        return f"{SUBNET}.{10 + self.host_index(host)}"

    def guest_address(self, guest: str) -> str:
        return f"{SUBNET}.{100 + int(guest[5:])}"

    # ---- the guest cluster (fence tests): nodes named like the lab's guests ---
    def gc_node_index(self, node: str) -> int:
        if node.startswith("guest") and node[5:].isdigit() and 1 <= int(node[5:]) <= MAX_GUESTS:
            return int(node[5:])
        raise UsageError(f"unknown guest-cluster node {node!r}", "use guest1 ... guest9")

    def gc_netns(self, node: str) -> str:
        return f"{self.tag}-g{self.gc_node_index(node)}"

    def gc_switch_port(self, node: str) -> str:
        return f"gport{self.gc_node_index(node)}"

    def gc_address(self, node: str) -> str:
        return f"{SUBNET}.{200 + self.gc_node_index(node)}"

    @property
    def gc_dir(self) -> Path:
        return self.labdir / "gcluster"

    def gc_node_dir(self, node: str) -> Path:
        return self.gc_dir / node

    @property
    def real_guests(self) -> bool:
        return self.guest_image in ("debian", "debian-remote")

    @property
    def remote_nodes(self) -> bool:
        return self.guest_image == "debian-remote"

    @property
    def image_variant(self) -> str:
        return "remote" if self.remote_nodes else "full"

    def remote_node_name(self, guest: str) -> str:
        """guest's node name as a Pacemaker Remote guest node of the host cluster (not the
        resource ID: Pacemaker names the implicit connection resource after the node)."""
        return f"{guest}-node"

    def service_id(self, guest: str) -> str:
        """The host-cluster resource that runs nginx inside a guest node."""
        return f"web-{guest}"

    def guest_nodeid(self, guest: str) -> int:
        """The guest's corosync nodeid in the real guest cluster."""
        return int(guest[5:])

    def guest_machine_id(self, guest: str) -> str:
        return uuid.UUID(self.guest_uuid(guest)).hex

    @property
    def gc_vip(self) -> str:
        return f"{SUBNET}.{GUEST_CLUSTER_VIP_INDEX}"

    def guest_disk(self, guest: str) -> Path:
        """The guest's own writable disk: a qcow2 overlay on the shared base."""
        return self.image_dir / f"{guest}.qcow2"

    def guest_seed(self, guest: str) -> Path:
        """The guest's read-only seed disk (its identity and configuration)."""
        return self.image_dir / f"{guest}-seed.img"

    def guest_mac(self, guest: str) -> str:
        return f"52:54:00:4b:00:{int(guest[5:]):02x}"

    def guest_uuid(self, guest: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kvmha-lab:{self.labdir}:{guest}"))

    def host_uuid(self, host: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kvmha-lab:{self.labdir}:{host}"))

    # ---- paths -------------------------------------------------------------
    def host_dir(self, host: str) -> Path:
        return self.labdir / "hosts" / host

    @property
    def run_dir(self) -> Path:
        return self.labdir / "run"

    @property
    def guests_dir(self) -> Path:
        return self.labdir / "guests"

    @property
    def image_dir(self) -> Path:
        return self.labdir / "image"

    @property
    def lockspace_dir(self) -> Path:
        """virtlockd's lockspace, on the storage every host shares (the lab directory)."""
        return self.labdir / "locks"

    @property
    def pdu_socket(self) -> Path:
        return self.labdir / "power" / "pdu.sock"

    @property
    def pdu_dir(self) -> Path:
        return self.labdir / "power"

    def libvirt_uri(self, host: str) -> str:
        """A libvirt URI usable from the machine itself (outside the host's namespaces)."""
        sock = self.host_dir(host) / "run" / "libvirt" / "libvirt-sock"
        return f"qemu:///system?socket={sock}"

    # ---- persistence -------------------------------------------------------
    @property
    def file(self) -> Path:
        return self.labdir / "lab.json"

    def save(self) -> None:
        self.labdir.mkdir(parents=True, exist_ok=True)
        data = {
            "hosts": self.hosts,
            "guests": self.guests,
            "agent": self.agent,
            "token_ms": self.token_ms,
            "guest_image": self.guest_image,
            "guest_cluster": self.guest_cluster,
        }
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(self.file)

    @classmethod
    def load(cls, labdir: Path) -> LabConfig | None:
        f = labdir / "lab.json"
        if not f.exists():
            return None
        try:
            data = json.loads(f.read_text())
            return cls(
                labdir=labdir,
                hosts=int(data["hosts"]),
                guests=int(data["guests"]),
                agent=str(data.get("agent", "Guest")),
                token_ms=int(data.get("token_ms", 1000)),
                guest_image=str(data.get("guest_image", "busybox")),
                guest_cluster=bool(data.get("guest_cluster", False)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise KvmhaError(f"{f} is damaged: {exc}", "run 'kvmha lab down --purge'") from exc


def check_labdir(labdir: Path) -> Path:
    labdir = labdir.resolve()
    for p in HOST_PRIVATE_PATHS:
        if labdir == Path(p) or Path(p) in labdir.parents:
            raise UsageError(
                f"lab directory {labdir} lies below {p}, which every lab host replaces",
                "choose a directory such as /var/lib/kvmha-lab",
            )
    return labdir
