"""The parameters of ocf:kvmha:Guest: one declarative table used for the metadata XML and
for validation (one source of truth), plus the cheap per-run parsing of OCF_RESKEY_*.

Parsing here checks types, ranges and simple syntax only (no file system, no libvirt); the
checks that touch files or libvirt are in ``kvmha.agents.guest`` (validate-all, start).
"""

from __future__ import annotations

from kvmha.endpoint import split_host_port

from .ocf import Env, parse_bool

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Tuple, Union

    Value = Union[str, int, bool, None]


class Param:
    """One agent parameter.  ``kind`` is the OCF content type (string, integer, boolean,
    select); ``lo``/``hi`` bound integers; ``replaced_by`` marks a deprecated name."""

    __slots__ = (
        "default",
        "deprecated_desc",
        "hi",
        "kind",
        "lo",
        "longdesc",
        "name",
        "options",
        "reloadable",
        "replaced_by",
        "required",
        "shortdesc",
        "unique_group",
    )

    def __init__(
        self,
        name: str,
        kind: str,
        shortdesc: str,
        longdesc: str,
        *,
        default: Value = None,
        required: bool = False,
        unique_group: str = "",
        reloadable: bool = False,
        lo: int | None = None,
        hi: int | None = None,
        options: Tuple[str, ...] = (),
        replaced_by: str = "",
        deprecated_desc: str = "",
    ) -> None:
        self.name = name
        self.kind = kind
        self.shortdesc = shortdesc
        self.longdesc = longdesc
        self.default = default
        self.required = required
        self.unique_group = unique_group
        self.reloadable = reloadable
        self.lo = lo
        self.hi = hi
        self.options = options
        self.replaced_by = replaced_by
        self.deprecated_desc = deprecated_desc

    @property
    def deprecated(self) -> bool:
        return bool(self.replaced_by or self.deprecated_desc)


# Flags of libvirt's virDomainShutdownFlags(), by the names `virsh shutdown --mode` uses.
SHUTDOWN_MODES = {"acpi": 1, "agent": 2, "initctl": 4, "signal": 8, "paravirt": 16}

P = Param
PARAMS: Tuple[Param, ...] = (
    P(
        "config",
        "string",
        "Domain XML file",
        "Absolute path to the libvirt domain XML file of the guest. The domain name is read "
        "from its <name> element. The guest is started from this file as a transient domain "
        "(like 'virsh create'), so this file is the definition of record.",
        required=True,
        unique_group="config",
    ),
    P(
        "hypervisor",
        "string",
        "Hypervisor URI",
        "libvirt URI of the local hypervisor.",
        default="qemu:///system",
    ),
    P(
        "force_stop",
        "boolean",
        "Always force off the domain on stop",
        "Stop with a hard power off (virDomainDestroy) without trying a graceful shutdown "
        "first. Cannot be combined with snapshot.",
        default=False,
        reloadable=True,
    ),
    P(
        "shutdown_mode",
        "string",
        "How to ask the guest to shut down",
        "Comma-separated list of graceful shutdown methods passed to virDomainShutdownFlags "
        "(the values 'virsh shutdown --mode' takes): acpi, agent, initctl, signal, paravirt. "
        "Empty means the hypervisor's default.",
        default="",
        reloadable=True,
    ),
    P(
        "shutdown_timeout",
        "integer",
        "Seconds to wait for a graceful shutdown",
        "Seconds to wait for the guest to power off after the graceful request before it is "
        "forced off. The request is re-sent every few seconds meanwhile (an ACPI press sent "
        "before the guest listens is lost). 0 means: until the stop operation's timeout, "
        "keeping a margin to force it off. The wait never exceeds the operation timeout.",
        default=0,
        lo=0,
        reloadable=True,
    ),
    P(
        "snapshot",
        "string",
        "Directory for saved guest state",
        "If set, stop saves the guest's memory state to <snapshot>/<domain>.state instead of "
        "shutting it down, and start restores from that file (then deletes it). "
        "Cannot be combined with force_stop.",
    ),
    P(
        "save_config_on_stop",
        "boolean",
        "Write the domain definition back to config",
        "On stop, migrate_to and migrate_from, write the current inactive domain XML of the "
        "guest back to the config file (atomically). Use it when the definition is changed "
        "through libvirt while the guest runs.",
        default=False,
        reloadable=True,
    ),
    P(
        "sync_config_on_stop",
        "boolean",
        "Deprecated: save_config_on_stop and csync2",
        "Deprecated. kvmha does not run csync2; setting this only implies " "save_config_on_stop.",
        default=False,
        reloadable=True,
        replaced_by="save_config_on_stop",
        deprecated_desc="csync2 is not run; use save_config_on_stop and shared storage.",
    ),
    P(
        "start_resources",
        "boolean",
        "Start networks and pools the domain uses",
        "On start (and on the target before a migration) start the libvirt networks and "
        "storage pools referenced by the domain XML if they are not active.",
        default=False,
        reloadable=True,
    ),
    P(
        "migration_transport",
        "string",
        "Transport for the remote libvirt URI",
        "Transport inserted into the hypervisor URI to reach the migration target, for "
        "example ssh or tcp: qemu:///system becomes qemu+ssh://<target>/system.",
        default="",
    ),
    P(
        "migration_user",
        "string",
        "User for the remote libvirt URI",
        "User name put into the remote URI (user@target). Ignored when remoteuri is set.",
        default="",
    ),
    P(
        "migration_network_suffix",
        "string",
        "Suffix for the migration network host name",
        "Appended to the target's node name (before the first dot of an FQDN) to reach it "
        "over a dedicated migration network, in the remote URI and the migration URI "
        "(tcp://<node><suffix>[:migrateport]).",
        default="",
    ),
    P(
        "migrateuri",
        "string",
        "Custom migration URI",
        "URI for the migration data stream (VIR_MIGRATE_PARAM_URI); %n is replaced by the "
        "target node name. Overrides migration_network_suffix and migrateport.",
        default="",
    ),
    P(
        "migrateport",
        "integer",
        "Port for the migration URI",
        "Port used in the generated migration URI (with migration_network_suffix). 0 lets "
        "libvirt choose a port.",
        default=0,
        lo=0,
        hi=65535,
    ),
    P(
        "migrate_options",
        "string",
        "Extra migration options",
        "virsh-style migrate options; supported: --p2p --tunnelled --persistent "
        "--undefinesource --compressed --auto-converge --postcopy --abort-on-error --unsafe "
        "--offline --tls --parallel --migrateuri=URI --listen-address=ADDR. Peer-to-peer is "
        "always used (the source libvirtd talks to the target).",
        default="",
    ),
    P(
        "migration_speed",
        "integer",
        "Migration bandwidth limit (MiB/s)",
        "Bandwidth limit for live migration in MiB/s; 0 means unlimited.",
        default=0,
        lo=0,
        reloadable=True,
    ),
    P(
        "migration_downtime",
        "integer",
        "Maximum migration downtime (ms)",
        "Maximum tolerable downtime of the final migration phase in milliseconds; 0 keeps "
        "the hypervisor's default.",
        default=0,
        lo=0,
        reloadable=True,
    ),
    P(
        "remoteuri",
        "string",
        "Custom remote hypervisor URI",
        "libvirt URI of the migration target's hypervisor; %n is replaced by the target "
        "node name. Overrides migration_transport, migration_user and "
        "migration_network_suffix for the remote URI. Also used for the double-start guard.",
        default="",
    ),
    P(
        "monitor_scripts",
        "string",
        "Scripts run by monitor",
        "Space-separated list of executables run on every monitor while the guest runs (and "
        "after start and migrate_from until they succeed). A non-zero exit is a failure.",
        default="",
        reloadable=True,
    ),
    P(
        "autoset_utilization_cpu",
        "boolean",
        "Set the cpu utilization",
        "Set the resource's 'cpu' utilization to the domain's vCPU count on start and when "
        "it changes (not on every monitor).",
        default=True,
        reloadable=True,
    ),
    P(
        "autoset_utilization_hv_memory",
        "boolean",
        "Set the hv_memory utilization",
        "Set the resource's 'hv_memory' utilization to the domain's maximum memory in MiB on "
        "start and when it changes.",
        default=True,
        reloadable=True,
    ),
    P(
        "autoset_utilization_host_memory",
        "boolean",
        "Set the host_memory utilization",
        "Set the resource's 'host_memory' utilization to the domain's maximum memory in MiB "
        "on start and when it changes (as VirtualDomain does).",
        default=True,
        reloadable=True,
    ),
    P(
        "unset_utilization_cpu",
        "boolean",
        "Remove the cpu utilization",
        "Remove the resource's 'cpu' utilization on start and migrate_from (wins over "
        "autoset_utilization_cpu).",
        default=False,
        reloadable=True,
    ),
    P(
        "unset_utilization_hv_memory",
        "boolean",
        "Remove the hv_memory utilization",
        "Remove the resource's 'hv_memory' utilization on start and migrate_from.",
        default=False,
        reloadable=True,
    ),
    P(
        "unset_utilization_host_memory",
        "boolean",
        "Remove the host_memory utilization",
        "Remove the resource's 'host_memory' utilization on start and migrate_from.",
        default=False,
        reloadable=True,
    ),
    P(
        "peer_uris",
        "string",
        "Hypervisors checked before start (double-start guard)",
        "Space-separated libvirt URIs of the other hosts (%n = node name). Start refuses to "
        "start the guest when one of them reports it running. Empty: every other cluster node "
        "(crm_node -l) through the migration remote URI. 'none' turns the guard off. Peers "
        "that cannot be reached within peer_timeout are skipped with a warning.",
        default="",
        reloadable=True,
    ),
    P(
        "peer_timeout",
        "integer",
        "Seconds for the double-start guard",
        "Upper bound in seconds for asking all peers whether they run the guest.",
        default=5,
        lo=1,
        hi=600,
        reloadable=True,
    ),
    P(
        "health_agent_ping",
        "boolean",
        "Ping the QEMU guest agent",
        "Deep monitor (OCF_CHECK_LEVEL 10 or more): the guest agent must answer guest-ping.",
        default=False,
        reloadable=True,
    ),
    P(
        "health_command",
        "string",
        "Command run in the guest",
        "Deep monitor: run this command inside the guest through the QEMU guest agent "
        "(guest-exec); its exit status must equal health_command_status. Split like a "
        "shell command line; not run through a shell.",
        default="",
        reloadable=True,
    ),
    P(
        "health_command_status",
        "integer",
        "Expected exit status of health_command",
        "Exit status health_command must return.",
        default=0,
        lo=0,
        hi=255,
        reloadable=True,
    ),
    P(
        "health_tcp",
        "string",
        "TCP endpoints that must accept connections",
        "Deep monitor: space-separated host:port endpoints ([v6addr]:port for IPv6) that must "
        "accept a TCP connection.",
        default="",
        reloadable=True,
    ),
    P(
        "health_http",
        "string",
        "URL that must answer",
        "Deep monitor: an http:// or https:// URL; a GET must return health_http_status.",
        default="",
        reloadable=True,
    ),
    P(
        "health_http_status",
        "integer",
        "Expected HTTP status",
        "HTTP status health_http must return.",
        default=200,
        lo=100,
        hi=599,
        reloadable=True,
    ),
    P(
        "health_start_grace",
        "integer",
        "Seconds a just started guest may fail its health checks",
        "Start (and migrate_from) waits for the health checks until the operation timeout. "
        "With a grace of N seconds, start succeeds once the domain runs and its "
        "monitor_scripts pass, and for N seconds after the start a deep monitor whose health "
        "checks fail reports running degraded (190, 'still starting') instead of a failure. "
        "0: the health checks must pass within the start timeout.",
        default=0,
        lo=0,
        hi=86400,
        reloadable=True,
    ),
    P(
        "health_timeout",
        "integer",
        "Seconds per health check",
        "Timeout in seconds of each health check (also bounded by the operation timeout).",
        default=5,
        lo=1,
        hi=3600,
        reloadable=True,
    ),
)
del P

BY_NAME: Dict[str, Param] = {p.name: p for p in PARAMS}

# Options accepted in migrate_options, mapped to libvirt VIR_MIGRATE_* flag values.
MIGRATE_FLAG_OPTIONS = {
    "--live": 1,
    "--p2p": 2,
    "--tunnelled": 4,
    "--persistent": 8,
    "--undefinesource": 16,
    "--unsafe": 512,
    "--offline": 1024,
    "--compressed": 2048,
    "--abort-on-error": 4096,
    "--auto-converge": 8192,
    "--postcopy": 32768,
    "--tls": 65536,
    "--parallel": 131072,
}
# accepted without a libvirt flag of their own: the switch to post-copy after the first
# pass of pre-copy (virsh migrate --postcopy-after-precopy)
MIGRATE_SWITCH_OPTIONS = ("--postcopy-after-precopy",)
MIGRATE_VALUE_OPTIONS = ("--migrateuri", "--listen-address")
# integer-valued: connections of --parallel, seconds before the switch to post-copy
MIGRATE_INT_OPTIONS = ("--parallel-connections", "--postcopy-after")
# VirtualDomain parameters kvmha does not implement: refused, never accepted and ignored
UNSUPPORTED_VIRTUALDOMAIN = ("backingfile", "stateless", "copyindirs")


class Params:
    """Parsed parameter values with typed accessors."""

    def __init__(self, values: Dict[str, Value]) -> None:
        self.values = values

    def s(self, name: str) -> str:
        v = self.values.get(name)
        return v if isinstance(v, str) else ""

    def i(self, name: str) -> int:
        v = self.values.get(name)
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    def b(self, name: str) -> bool:
        return self.values.get(name) is True


def parse(env: Env) -> Tuple[Params, List[str]]:
    """Parse OCF_RESKEY_* for every parameter.  Returns the values (defaults for missing or
    bad ones) and a list of errors, each naming the parameter and what is wrong."""
    values: Dict[str, Value] = {}
    errors: List[str] = []
    for p in PARAMS:
        raw = env.param(p.name)
        values[p.name] = p.default
        if raw is None or (raw == "" and p.kind != "string"):
            if p.required:
                errors.append(f"parameter {p.name} is required")
            continue
        if p.kind == "boolean":
            b = parse_bool(raw)
            if b is None:
                errors.append(
                    f"parameter {p.name}={raw!r} is not a boolean " "(use true/false, yes/no, 1/0)"
                )
            else:
                values[p.name] = b
        elif p.kind == "integer":
            try:
                n = int(raw.strip())
            except ValueError:
                errors.append(f"parameter {p.name}={raw!r} is not an integer")
                continue
            if (p.lo is not None and n < p.lo) or (p.hi is not None and n > p.hi):
                lo = "-inf" if p.lo is None else str(p.lo)
                hi = "inf" if p.hi is None else str(p.hi)
                rng = f"{lo}..{hi}"
                errors.append(f"parameter {p.name}={n} is out of range {rng}")
            else:
                values[p.name] = n
        else:
            values[p.name] = raw.strip()
    params = Params(values)
    if params.b("sync_config_on_stop"):
        values["save_config_on_stop"] = True
    errors.extend(_check_syntax(params))
    return params, errors


def _check_syntax(p: Params) -> List[str]:
    errors: List[str] = []
    config = p.s("config")
    if config and not config.startswith("/"):
        errors.append(f"parameter config={config!r} must be an absolute path")
    if p.b("force_stop") and p.s("snapshot"):
        errors.append(
            "parameters force_stop and snapshot cannot be used together "
            "(force_stop would discard the state snapshot saves)"
        )
    snap = p.s("snapshot")
    if snap and not snap.startswith("/"):
        errors.append(f"parameter snapshot={snap!r} must be an absolute directory path")
    hv = p.s("hypervisor")
    if not hv or ":" not in hv:
        errors.append(f"parameter hypervisor={hv!r} is not a libvirt URI (e.g. qemu:///system)")
    for mode in filter(None, p.s("shutdown_mode").replace(" ", "").split(",")):
        if mode not in SHUTDOWN_MODES:
            errors.append(
                f"parameter shutdown_mode: unknown mode {mode!r} "
                f"(known: {', '.join(SHUTDOWN_MODES)})"
            )
    user = p.s("migration_user")
    if user and not _is_user_name(user):
        errors.append(f"parameter migration_user={user!r} is not a valid user name")
    transport = p.s("migration_transport")
    if transport and not (transport.isalnum() and transport.islower()):
        errors.append(
            f"parameter migration_transport={transport!r} is not a transport name "
            "(e.g. ssh, tcp, tls)"
        )
    for opt in p.s("migrate_options").split():
        key = opt.split("=", 1)[0]
        if key in MIGRATE_FLAG_OPTIONS and "=" not in opt:
            continue
        if key in MIGRATE_SWITCH_OPTIONS and "=" not in opt:
            continue
        if key in MIGRATE_VALUE_OPTIONS and "=" in opt and opt.split("=", 1)[1]:
            continue
        if key in MIGRATE_INT_OPTIONS and opt.split("=", 1)[-1].isdigit() and "=" in opt:
            continue
        errors.append(f"parameter migrate_options: unsupported option {opt!r}")
    opts = {o.split("=", 1)[0] for o in p.s("migrate_options").split()}
    if opts & {"--postcopy-after-precopy", "--postcopy-after"} and "--postcopy" not in opts:
        errors.append(
            "parameter migrate_options: --postcopy-after-precopy and --postcopy-after need "
            "--postcopy"
        )
    if "--parallel-connections" in opts and "--parallel" not in opts:
        errors.append("parameter migrate_options: --parallel-connections needs --parallel")
    for ep in p.s("health_tcp").split():
        if split_host_port(ep) is None:
            errors.append(
                f"parameter health_tcp: {ep!r} is not host:port (an IPv6 address: [addr]:port)"
            )
    url = p.s("health_http")
    if url and not (
        url.startswith(("http://", "https://")) and len(url.split("/")) >= 3 and url.split("/")[2]
    ):
        errors.append(f"parameter health_http={url!r} is not an http:// or https:// URL")
    for script in p.s("monitor_scripts").split():
        if not script.startswith("/"):
            errors.append(f"parameter monitor_scripts: {script!r} must be an absolute path")
    return errors


def _is_user_name(user: str) -> bool:
    if not user[0].islower() or not user[0].isalpha():
        return False
    return all(c.isdigit() or c == "-" or c == "_" or (c.isalpha() and c.islower()) for c in user)


def shutdown_flags(mode: str) -> int:
    flags = 0
    for m in filter(None, mode.replace(" ", "").split(",")):
        flags |= SHUTDOWN_MODES.get(m, 0)
    return flags


# ------------------------------------------------------------------ agent description
AGENT_NAME = "Guest"
AGENT_SHORTDESC = "KVM guest managed through libvirt (kvmha)"
AGENT_LONGDESC = (
    "Manages one KVM/QEMU guest through libvirt-python: start from a domain XML file as a "
    "transient domain, graceful stop with a bounded fallback to power off, live migration, "
    "and monitoring at depth 0 (domain state, monitor_scripts) and depth 10 (guest health "
    "checks through the QEMU guest agent, TCP and HTTP). Every libvirt call is bounded by "
    "the operation timeout; probes work while libvirtd is down (QEMU process lookup). "
    "Parameters keep the names of ocf:heartbeat:VirtualDomain where the meaning is the same."
)

# (name, timeout, interval, depth); depth/interval None = attribute omitted
ACTIONS: Tuple[Tuple[str, str, str | None, str | None], ...] = (
    ("start", "90s", None, None),
    ("stop", "90s", None, None),
    ("monitor", "30s", "10s", "0"),
    ("monitor", "40s", "60s", "10"),
    ("status", "30s", None, None),
    ("migrate_to", "120s", None, None),
    ("migrate_from", "60s", None, None),
    ("reload-agent", "10s", None, None),
    ("meta-data", "5s", None, None),
    ("validate-all", "30s", None, None),
)
