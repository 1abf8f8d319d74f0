"""What ``kvmha guest`` and ``kvmha dc`` ask the cluster to do, call by call (pcs tier0
style: kvmha.pcmk's runner expects an exact list of argvs), without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cluster_fixture import CIB, CRM_MON
from support.pcmk_runner import Call, UnexpectedCall, pcmk_calls

from kvmha import datacentre, guests
from kvmha.errors import UsageError

QUERY = ["cibadmin", "-Q"]
CRM_MON_ARGV = ["crm_mon", "-1", "--output-as=xml", "--include=default,fencing,failcounts"]
# the fixture's crm_mon runs guest2 on host1
RUNNING = CRM_MON.read_text()


def _xml(tmp_path: Path, name: str) -> Path:
    f = tmp_path / f"{name}.xml"
    f.write_text(f"<domain type='kvm'><name>{name}</name></domain>")
    return f


def _create(name: str, xml: Path, *extra_params: str, health: bool = False) -> list[str]:
    argv = [
        "pcs",
        "resource",
        "create",
        name,
        "ocf:kvmha:Guest",
        f"config={xml}",
        "hypervisor=qemu:///system",
        "migration_transport=ssh",
        *extra_params,
        "meta",
        "allow-migrate=true",
        "op",
        "start",
        "timeout=120s",
        "stop",
        "timeout=120s",
        "monitor",
        "interval=10s",
        "timeout=30s",
    ]
    if health:
        argv += ["monitor", "interval=30s", "timeout=40s", "OCF_CHECK_LEVEL=10"]
    return [*argv, "migrate_to", "timeout=120s", "migrate_from", "timeout=90s", "--disabled"]


def _cib_without(name: str) -> str:
    return CIB.replace(f'<primitive id="{name}"', f'<primitive id="{name}-old"')


def test_guest_add_creates_disabled_then_enables_and_waits(tmp_path: Path) -> None:
    xml = _xml(tmp_path, "guest2")
    with pcmk_calls(
        Call(QUERY, _cib_without("guest2")),
        Call(_create("guest2", xml)),
        Call(["pcs", "resource", "enable", "guest2"]),
        Call(CRM_MON_ARGV, RUNNING),
    ) as runner:
        host = guests.add(
            "guest2",
            xml,
            dc=None,
            health=[],
            remote_node=False,
            transport="ssh",
            wait_s=5,
            say=lambda _m: None,
        )
    runner.assert_done()
    assert host == "host1"


def test_guest_add_with_a_data_centre_places_it_before_enabling(tmp_path: Path) -> None:
    xml = _xml(tmp_path, "guest2")
    cib = _cib_without("guest2")
    check = guests.HealthCheck.parse("tcp=[fe80::1]:80")
    with pcmk_calls(
        Call(QUERY, cib),
        Call(_create("guest2", xml, "health_tcp=[fe80::1]:80", health=True)),
        Call(QUERY, cib),
        Call(
            [
                "crm_resource",
                "--resource",
                "guest2",
                "--meta",
                "--set-parameter",
                "kvmha-dc",
                "--parameter-value",
                "qa",
            ]
        ),
        Call(
            [
                "cibadmin",
                "--create",
                "-o",
                "constraints",
                "--xml-text",
                datacentre.placement_constraint("guest2", "qa"),
            ]
        ),
        Call(["pcs", "resource", "enable", "guest2"]),
        Call(CRM_MON_ARGV, RUNNING),
    ) as runner:
        guests.add(
            "guest2",
            xml,
            dc="qa",
            health=[check],
            remote_node=False,
            transport="ssh",
            wait_s=5,
            say=lambda _m: None,
        )
    runner.assert_done()


def test_guest_add_refuses_before_changing_anything(tmp_path: Path) -> None:
    xml = _xml(tmp_path, "guest2")
    with pcmk_calls(Call(QUERY, CIB)) as runner, pytest.raises(UsageError, match="exists already"):
        guests.add(
            "guest2",
            xml,
            dc=None,
            health=[],
            remote_node=False,
            transport="ssh",
            wait_s=5,
            say=lambda _m: None,
        )
    runner.assert_done()
    with (
        pcmk_calls(Call(QUERY, _cib_without("guest2"))),
        pytest.raises(UsageError, match="unknown data centre 'prod'"),
    ):
        guests.add(
            "guest2",
            xml,
            dc="prod",
            health=[],
            remote_node=False,
            transport="ssh",
            wait_s=5,
            say=lambda _m: None,
        )


def test_dc_create_and_add_host() -> None:
    with pcmk_calls(
        Call(QUERY, CIB),
        Call(
            [
                "crm_attribute",
                "--type",
                "crm_config",
                "--set-name",
                "kvmha-datacentres",
                "--name",
                "kvmha-dc-prod",
                "--update",
                "prod",
            ]
        ),
        Call(QUERY, CIB),
        Call(
            [
                "crm_attribute",
                "--type",
                "nodes",
                "--node",
                "host1",
                "--name",
                "kvmha-dc",
                "--update",
                "qa",
            ]
        ),
    ) as runner:
        datacentre.create("prod")
        assert datacentre.add_host("qa", "host1") == "dev"
    runner.assert_done()


def test_an_unexpected_call_fails() -> None:
    with pcmk_calls(Call(QUERY, CIB)), pytest.raises(UnexpectedCall):
        guests.remove("guest1")  # asks the CIB, then pcs resource delete: not on the list
