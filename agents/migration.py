"""Remote and migration URIs, built the way ocf:heartbeat:VirtualDomain builds them, and
the libvirt flags/typed parameters for virDomainMigrateToURI3."""

from __future__ import annotations

from .guest_params import MIGRATE_FLAG_OPTIONS, Params

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Tuple

VIR_MIGRATE_LIVE = 1
VIR_MIGRATE_PEER2PEER = 2


def _with_suffix(node: str, suffix: str) -> str:
    """Insert the suffix before the first dot (an FQDN keeps its domain)."""
    if not suffix:
        return node
    head, dot, tail = node.partition(".")
    return head + suffix + dot + tail


def remote_uri(p: Params, node: str) -> str:
    """libvirt URI of ``node``'s hypervisor: remoteuri with %n, or the hypervisor URI with
    +transport, user@ and the node (plus migration_network_suffix) as host."""
    if p.s("remoteuri"):
        return p.s("remoteuri").replace("%n", node)
    hv = p.s("hypervisor")
    scheme, _sep, rest = hv.partition("://")
    host_port, slash, path = rest.partition("/")
    port = ""
    if ":" in host_port and not host_port.endswith("]"):
        port = ":" + host_port.rsplit(":", 1)[1]
    transport = p.s("migration_transport")
    if transport and "+" not in scheme:
        scheme = f"{scheme}+{transport}"
    elif transport:
        scheme = f"{scheme.split('+', 1)[0]}+{transport}"
    host = _with_suffix(node, p.s("migration_network_suffix"))
    user = p.s("migration_user")
    if user:
        host = f"{user}@{host}"
    return f"{scheme}://{host}{port}{slash}{path}"


def migrate_uri(p: Params, node: str) -> str:
    """The migration data URI: migrateuri, --migrateuri= in migrate_options, or
    tcp://<node><suffix>[:migrateport] when migration_network_suffix is set; else ''."""
    if p.s("migrateuri"):
        return p.s("migrateuri").replace("%n", node)
    for opt in p.s("migrate_options").split():
        if opt.startswith("--migrateuri="):
            return opt.split("=", 1)[1].replace("%n", node)
    suffix = p.s("migration_network_suffix")
    if suffix and p.s("hypervisor").startswith("qemu"):
        port = p.i("migrateport")
        return f"tcp://{_with_suffix(node, suffix)}" + (f":{port}" if port else "")
    return ""


def flags_and_params(p: Params, node: str, libvirt: Any) -> Tuple[int, Dict[str, Any]]:
    """Flags (always LIVE|PEER2PEER: the source libvirtd connects to the target, so this
    agent keeps its single connection) and typed parameters for migrateToURI3."""
    flags = VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER
    params: Dict[str, Any] = {}
    for opt in p.s("migrate_options").split():
        key, _eq, value = opt.partition("=")
        if key in MIGRATE_FLAG_OPTIONS:
            flags |= MIGRATE_FLAG_OPTIONS[key]
        elif key == "--listen-address":
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = value
    if flags & MIGRATE_FLAG_OPTIONS["--offline"]:
        flags &= ~VIR_MIGRATE_LIVE
    uri = migrate_uri(p, node)
    if uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = uri
    if p.i("migration_speed") > 0:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = p.i("migration_speed")
    return flags, params
