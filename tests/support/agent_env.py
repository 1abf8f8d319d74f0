"""The environment Pacemaker gives ocf:kvmha:Guest, for in-process agent tests against
libvirt's test:///default driver: one place for the parameters every such test sets."""

from __future__ import annotations

from pathlib import Path


def write_test_domain(tmp_path: Path, name: str) -> Path:
    """A minimal test-driver domain XML named name, written under tmp_path."""
    cfg = tmp_path / f"{name}.xml"
    cfg.write_text(
        f"<domain type='test'><name>{name}</name><memory>65536</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    return cfg


def agent_env(tmp_path: Path, config: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """OCF_RESKEY_* and HA_* for one agent call: no peers, no utilization, 30 s timeout;
    extra adds to it or overrides it."""
    env = {
        "OCF_RESKEY_config": str(config),
        "OCF_RESKEY_hypervisor": "test:///default",
        "HA_RSCTMP": str(tmp_path),
        "HA_LOGFACILITY": "none",
        "OCF_RESKEY_peer_uris": "none",
        "OCF_RESKEY_autoset_utilization_cpu": "0",
        "OCF_RESKEY_autoset_utilization_hv_memory": "0",
        "OCF_RESKEY_autoset_utilization_host_memory": "0",
        "OCF_RESKEY_CRM_meta_timeout": "30000",
    }
    env.update(extra or {})
    return env
