"""The lab network: a switch namespace with a bridge, a cable (veth) to every host.

Inside each host the cable is enslaved to the host bridge ``br0``, which carries the
host's address and the guests' NICs (the usual bridged KVM host). Nothing touches the
machine's own network namespace: the lab subnet exists only inside the lab.
"""

from __future__ import annotations

from kvmha.errors import KvmhaError
from kvmha.process import run
from kvmha.tools.lab.config import LabConfig


def existing_netns() -> set[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def create(cfg: LabConfig) -> None:
    have = existing_netns()
    sw = cfg.switch_netns
    if sw not in have:
        run(["ip", "netns", "add", sw])
        run(["ip", "-n", sw, "link", "set", "lo", "up"])
        run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", sw, "link", "set", "br0", "up"])
    for host in cfg.host_names():
        ns = cfg.host_netns(host)
        if ns in have:
            continue
        _cable(cfg, ns, cfg.switch_port(host))
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", ns, "link", "set", "eth0", "master", "br0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{cfg.host_address(host)}/24", "dev", "br0"])
        run(["ip", "-n", ns, "link", "set", "br0", "up"])


def create_node(cfg: LabConfig, netns: str, port: str, address: str) -> None:
    """A namespace with one cable into the switch and an address on it (no bridge)."""
    if netns in existing_netns():
        return
    _cable(cfg, netns, port)
    run(["ip", "-n", netns, "link", "set", "lo", "up"])
    run(["ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])


def _cable(cfg: LabConfig, netns: str, port: str) -> None:
    """A new namespace whose eth0 is cabled to the switch's port (plugged in)."""
    sw = cfg.switch_netns
    run(["ip", "netns", "add", netns])
    run(
        [
            "ip",
            "-n",
            sw,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns,
        ]
    )
    run(["ip", "-n", sw, "link", "set", port, "master", "br0", "up"])


def set_cable(cfg: LabConfig, host: str, connected: bool) -> None:
    """Plug or unplug the host's cable at the switch."""
    if cfg.switch_netns not in existing_netns():
        raise KvmhaError("the lab network is not there", "run 'kvmha lab up'")
    run(
        [
            "ip",
            "-n",
            cfg.switch_netns,
            "link",
            "set",
            cfg.switch_port(host),
            "up" if connected else "down",
        ]
    )


def cable_connected(cfg: LabConfig, host: str) -> bool:
    out = run(
        ["ip", "-n", cfg.switch_netns, "-o", "link", "show", cfg.switch_port(host)], check=False
    ).stdout
    if "<" not in out:
        return False
    flags = out.split("<", 1)[1].split(">", 1)[0].split(",")
    return "UP" in flags


def lab_netns(cfg: LabConfig) -> list[str]:
    mine = {cfg.switch_netns} | {cfg.host_netns(h) for h in cfg.host_names()}
    have = existing_netns()
    mine |= {ns for ns in have if ns.startswith(f"{cfg.tag}-g")}  # guest-cluster nodes
    return sorted(mine & have)


def delete(cfg: LabConfig) -> None:
    for ns in lab_netns(cfg):
        run(["ip", "netns", "del", ns], check=False)
