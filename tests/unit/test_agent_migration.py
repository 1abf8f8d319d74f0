"""Remote / migration URIs built like VirtualDomain, and migrateToURI3 flags."""

from __future__ import annotations

import types

from kvmha.agents import guest_params as gp
from kvmha.agents import migration
from kvmha.agents.ocf import Env


def params(**kw: str) -> gp.Params:
    env = {"OCF_RESKEY_config": "/x.xml"}
    env.update({f"OCF_RESKEY_{k}": v for k, v in kw.items()})
    p, errors = gp.parse(Env(env))
    assert not errors, errors
    return p


def test_remote_uri() -> None:
    assert migration.remote_uri(params(), "h2") == "qemu://h2/system"
    assert migration.remote_uri(params(migration_transport="tcp"), "h2") == "qemu+tcp://h2/system"
    assert (
        migration.remote_uri(
            params(
                migration_transport="ssh", migration_user="admin", migration_network_suffix="-mig"
            ),
            "h2.example.com",
        )
        == "qemu+ssh://admin@h2-mig.example.com/system"
    )
    assert (
        migration.remote_uri(
            params(hypervisor="qemu+tcp://localhost:16509/system", migration_transport="ssh"), "h2"
        )
        == "qemu+ssh://h2:16509/system"
    )
    assert (
        migration.remote_uri(params(remoteuri="qemu+tcp://%n/system", migration_user="x"), "h3")
        == "qemu+tcp://h3/system"
    )


def test_migrate_uri() -> None:
    assert migration.migrate_uri(params(), "h2") == ""
    assert (
        migration.migrate_uri(
            params(migration_network_suffix="-mig", migrateport="49152"), "h2.lan"
        )
        == "tcp://h2-mig.lan:49152"
    )
    assert migration.migrate_uri(params(migrateuri="tcp://%n-x"), "h2") == "tcp://h2-x"
    assert (
        migration.migrate_uri(params(migrate_options="--p2p --migrateuri=tcp://%n:1"), "h2")
        == "tcp://h2:1"
    )


def test_flags_and_params() -> None:
    lv = types.SimpleNamespace(
        VIR_MIGRATE_PARAM_URI="migrate_uri",
        VIR_MIGRATE_PARAM_BANDWIDTH="bandwidth",
        VIR_MIGRATE_PARAM_LISTEN_ADDRESS="listen_address",
    )
    flags, prm = migration.flags_and_params(params(), "h2", lv)
    assert flags == 1 | 2 and prm == {}
    flags, prm = migration.flags_and_params(
        params(
            migrate_options="--tunnelled --persistent --migrateuri=tcp://%n-m",
            migration_speed="100",
        ),
        "h2",
        lv,
    )
    assert flags == 1 | 2 | 4 | 8
    assert prm == {"migrate_uri": "tcp://h2-m", "bandwidth": 100}
