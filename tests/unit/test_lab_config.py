from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmha.errors import KvmhaError, UsageError
from kvmha.tools.lab.config import LabConfig, check_labdir


def cfg(**kw: object) -> LabConfig:
    args: dict[str, object] = {"labdir": Path("/var/lib/kvmha-lab"), "hosts": 3, "guests": 2}
    args.update(kw)
    return LabConfig(**args)  # type: ignore[arg-type]


def test_names_and_addresses() -> None:
    c = cfg()
    assert c.host_names() == ["host1", "host2", "host3"]
    assert c.guest_names() == ["guest1", "guest2"]
    assert c.host_address("host2") == "10.77.0.12"
    assert c.guest_address("guest2") == "10.77.0.102"
    assert c.guest_mac("guest2") == "52:54:00:4b:00:02"
    assert c.host_netns("host3") == f"{c.tag}-h3"
    assert c.switch_netns == f"{c.tag}-sw"
    assert len(c.switch_netns) <= 15  # a Linux interface-name-sized tag


def test_two_labdirs_get_different_namespaces() -> None:
    assert cfg().tag != cfg(labdir=Path("/srv/other-lab")).tag


def test_uuids_are_stable_and_distinct() -> None:
    c = cfg()
    assert c.host_uuid("host1") == cfg().host_uuid("host1")
    assert len({c.host_uuid(h) for h in c.host_names()}) == 3
    assert c.guest_uuid("guest1") != c.guest_uuid("guest2")


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"hosts": 0}, "--hosts 0 is out of range"),
        ({"hosts": 6}, "--hosts 6 is out of range"),
        ({"guests": -1}, "--guests -1 is out of range"),
        ({"guests": 10}, "--guests 10 is out of range"),
        ({"agent": "Xen"}, "unknown agent 'Xen'"),
        ({"token_ms": 50}, "token 50 ms is out of range"),
    ],
)
def test_bad_sizes_are_usage_errors(kw: dict[str, object], text: str) -> None:
    with pytest.raises(UsageError, match=text):
        cfg(**kw)


def test_unknown_host_names_the_known_ones() -> None:
    with pytest.raises(UsageError) as exc:
        cfg().host_index("host4")
    assert exc.value.message == "unknown host 'host4'"
    assert exc.value.fix == "this lab has host1, host2, host3"
    with pytest.raises(UsageError):
        cfg().host_index("hostx")


@pytest.mark.parametrize("bad", ["/tmp/lab", "/run/lab", "/var/lib/pacemaker/x", "/etc/libvirt"])
def test_labdir_must_not_be_replaced_inside_hosts(bad: str) -> None:
    with pytest.raises(UsageError, match="which every lab host replaces"):
        check_labdir(Path(bad))


def test_labdir_ok() -> None:
    assert check_labdir(Path("/var/lib/kvmha-lab")) == Path("/var/lib/kvmha-lab")


def test_save_and_load(tmp_path: Path) -> None:
    c = cfg(labdir=tmp_path, agent="Guest", token_ms=3000)
    c.save()
    assert LabConfig.load(tmp_path) == c
    assert LabConfig.load(tmp_path / "nothing") is None


def test_damaged_lab_file(tmp_path: Path) -> None:
    (tmp_path / "lab.json").write_text(json.dumps({"hosts": "many"}))
    with pytest.raises(KvmhaError, match="is damaged"):
        LabConfig.load(tmp_path)
