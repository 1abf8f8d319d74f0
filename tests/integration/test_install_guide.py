"""docs/install.md, executed: an empty 3-host lab set up by the guide's own kvmha commands
(the lab runs its `host-init` step on every host), a guest cluster given its key and its
stonith device by the guide's `key-create` and `guest-stonith` steps, then fencing through
the listeners, a key created while a host is powered off, revocation and rotation.

Nothing lab-only writes kvmha's configuration here: the guest cluster's lab-made device and
key file are removed before the guide's steps run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmha.tools.lab import guide
from kvmha.tools.lab.guestcluster import KEY_NAME as LAB_KEY
from kvmha.tools.lab.guestcluster import GuestCluster
from kvmha.tools.lab.lab import Lab

from .helpers import wait_for
from .test_fence_lab import audit, instances, settle, stonith

pytestmark = pytest.mark.lab
KEY = "gc-install"
NODE_KEY = "/etc/kvmha/guide-fence.key"  # private to each guest-cluster node (bound there)
HOST_COPY = "/tmp/gc-install.key"  # host1's private /tmp
TEST_LABS = Path(os.environ.get("KVMHA_TEST_LABS", "/var/lib/kvmha-test"))  # as conftest's
TIMING = TEST_LABS / "install-guide-timing.json"
Setup = tuple[Lab, GuestCluster]


def kvmha(lab: Lab, host: str, *args: str, check: bool = True) -> Any:
    return lab.run_in(host, guide.lab_argv(["kvmha", *args]), timeout=120, check=check)


def guide_values(lab: Lab, gc: GuestCluster) -> dict[str, str]:
    return {
        "GUEST_CLUSTER": KEY,
        "GUEST_DOMAINS": ",".join(gc.nodes),
        "GUEST_KEY_COPY": HOST_COPY,
        "LISTENERS": gc.listener_addresses(),
        "GUEST_KEY_FILE": NODE_KEY,
        "HOST_MAP": ";".join(f"{n}:{n}" for n in gc.nodes),
    }


def give_guests(lab: Lab, gc: GuestCluster, host_file: str) -> None:
    """What 'scp host1:FILE /etc/cluster/...' does: the file, 0600, in every guest node."""
    data = (lab.cfg.host_dir("host1") / host_file.lstrip("/")).read_bytes()
    for node in gc.nodes:
        dest = lab.cfg.gc_node_dir(node) / NODE_KEY.lstrip("/")
        dest.write_bytes(data)
        dest.chmod(0o600)


@pytest.fixture(scope="module")
def install_lab() -> Iterator[Setup]:
    t0, wall0 = time.monotonic(), time.time()
    labdir = TEST_LABS / "install3"
    Lab(labdir).down(purge=True)  # leftovers of an interrupted run
    lab = Lab(labdir, lambda m: print(f"[lab] {m}", flush=True))
    try:
        lab.up(3, 3)
        timing = {"t0": wall0, "lab_up_s": round(time.monotonic() - t0, 1)}
        gc = GuestCluster(lab)
        gc.up()
        # the lab's own device and key file go: the guide's steps replace them
        gc.run_in(gc.nodes[0], ["pcs", "stonith", "delete", "fence-kvmha"], timeout=60)
        for h in lab.cfg.host_names():
            (lab.cfg.host_dir(h) / f"etc/kvmha/fence/keys/{LAB_KEY}.key").unlink()
        values = guide_values(lab, gc)
        for argv in guide.commands("key-create", values):
            lab.run_in("host1", guide.lab_argv(argv), timeout=120)
        give_guests(lab, gc, HOST_COPY)
        for argv in guide.commands("guest-stonith", values):
            assert argv[0] == "pcs"
            gc.run_in(gc.nodes[0], argv, timeout=120)
        wait_for("the guide's fence device started", gc.device_started, 120)
        timing["to_fencing_device_s"] = round(time.monotonic() - t0, 1)
        TIMING.write_text(json.dumps(timing))
        print(f"[install] {timing}", flush=True)
        yield lab, gc
    finally:
        if lab.is_configured():
            GuestCluster(lab).down()
        Lab(labdir).down()


@pytest.fixture
def setup(install_lab: Setup) -> Setup:
    settle(*install_lab)
    return install_lab


def test_hosts_configured_by_the_guide_only(setup: Setup) -> None:
    lab, _gc = setup
    prints = set()
    for h in lab.cfg.host_names():
        conf = (lab.cfg.host_dir(h) / "etc/kvmha/fence/listener.conf").read_text()
        assert f"host = {h}\n" in conf and "written by 'kvmha fence init'" in conf
        r = kvmha(lab, h, "fence", "init", "--json")  # idempotent: a rerun changes nothing
        data = json.loads(r.stdout)
        assert data["schema"] == "kvmha.fence-init.v1" and not data["config"]["changed"]
        assert data["cib"] == "matches"
        prints.add(data["hosts_key"]["fingerprint"])
    assert len(prints) == 1  # one hosts' secret, derived on every host from the authkey
    assert not list((lab.cfg.host_dir("host1") / "etc/kvmha/fence/keys").glob("*.key"))


def test_guest_cluster_fences_through_the_listeners(setup: Setup) -> None:
    lab, gc = setup
    before = instances(lab, "guest1")
    assert len(before) == 1, before
    r = stonith(gc, "guest2", "--reboot", "guest1")
    assert r.returncode == 0, r.stderr + r.stdout
    assert before[0] not in instances(lab, "guest1")
    ev = [e for e in audit(lab) if e.get("action") == "reboot" and e.get("plug") == "guest1"]
    assert ev and ev[-1]["result"] == "off" and ev[-1]["key"] == f"{KEY}:1"
    timing = json.loads(TIMING.read_text())
    timing.setdefault("to_first_fence_s", round(time.time() - timing["t0"], 1))
    TIMING.write_text(json.dumps(timing))
    print(f"[install] empty lab -> guest cluster fenced a member: {timing}", flush=True)
    wait_for("guest1 running again", lambda: len(instances(lab, "guest1")) == 1, 120)


def test_guide_check_fence_test_with_the_guests_key(setup: Setup) -> None:
    lab, _gc = setup
    # the guests' copy is on host1 only (HOST_COPY): test from there, as the guide does
    r = kvmha(lab, "host1", "fence", "test", "guest3", "--key", HOST_COPY, "--json")
    rows = json.loads(r.stdout)
    assert [x["status"] for x in rows] == ["ok"] * 3 and all(x["state"] == "on" for x in rows)


def listener_rows(lab: Lab, key_file: str, plug: str = "guest1") -> list[dict[str, Any]]:
    r = kvmha(lab, "host1", "fence", "test", plug, "--key", key_file, "--json", check=False)
    return list(json.loads(r.stdout))


def all_ok(rows: list[dict[str, Any]]) -> bool:
    return len(rows) == 3 and all(x["status"] == "ok" for x in rows)


def none_ok(rows: list[dict[str, Any]]) -> bool:
    return len(rows) == 3 and all(x["status"] != "ok" for x in rows)


def test_key_created_while_a_host_is_off_reaches_it_when_back(setup: Setup) -> None:
    lab, _gc = setup
    lab.power_cut("host3")
    r = kvmha(lab, "host1", "fence", "key", "create", "while-off", "--domains", "guest1",
              "--out", "/tmp/while-off.key", "--json")  # fmt: skip
    data = json.loads(r.stdout)
    assert data["listeners"]["host3"].startswith("unreachable"), data
    assert {data["listeners"][h] for h in ("host1", "host2")} == {"accepts"}
    if not lab.powered("host3"):  # the host cluster may have power-cycled it already
        lab.power_on("host3")

    def host3_accepts() -> bool:
        r = kvmha(lab, "host1", "fence", "key", "list", "--json", check=False)
        if r.returncode != 0:
            return False
        rows = {k["name"]: k for k in json.loads(r.stdout)["keys"]}
        return rows["while-off"]["listeners"].get("host3") == ["while-off:1"]

    wait_for("host3 back, accepting the key made while it was off", host3_accepts, 240, 2)
    assert all_ok(listener_rows(lab, "/tmp/while-off.key"))
    r = kvmha(lab, "host1", "fence", "key", "sync", "--json")
    assert {v["state"] for v in json.loads(r.stdout)["listeners"].values()} == {"in sync"}


def test_revoked_key_is_refused_on_every_host_within_seconds(setup: Setup) -> None:
    lab, _gc = setup
    kvmha(lab, "host1", "fence", "key", "create", "to-revoke", "--domains", "guest1",
          "--out", "/tmp/to-revoke.key")  # fmt: skip
    f = "/tmp/to-revoke.key"
    wait_for("the new key accepted everywhere", lambda: all_ok(listener_rows(lab, f)), 30, 0.5)
    t0 = time.monotonic()
    r = kvmha(lab, "host2", "fence", "key", "revoke", "to-revoke", "--json")
    assert set(json.loads(r.stdout)["listeners"].values()) == {"refuses"}
    wait_for("the revoked key refused by every listener", lambda: none_ok(listener_rows(lab, f)),
             10, 0.2)  # fmt: skip
    took = time.monotonic() - t0
    print(f"[install] revocation refused everywhere after {took:.1f} s", flush=True)
    refused = [e for e in audit(lab) if e.get("key") == "to-revoke:1" and e["result"] == "refused"]
    assert {e["listener"] for e in refused} == set(lab.cfg.host_names())
    revokes = [e for e in audit(lab) if e.get("action") == "key-revoke"]
    assert revokes and revokes[-1]["key"] == "to-revoke" and revokes[-1]["origin"]


def test_rotated_key_old_and_new_in_the_overlap_only_new_after(setup: Setup) -> None:
    lab, _gc = setup
    old, new = "/tmp/rot-old.key", "/tmp/rot-new.key"
    kvmha(lab, "host1", "fence", "key", "create", "rot", "--domains", "guest1", "--out", old)
    wait_for("rot:1 accepted everywhere", lambda: all_ok(listener_rows(lab, old)), 30, 0.5)
    r = kvmha(lab, "host3", "fence", "key", "rotate", "rot", "--overlap", "25s", "--json")
    meta = json.loads(r.stdout)["meta"]
    assert meta["generation"] == 2 and meta["previous"] == 1
    kvmha(lab, "host1", "fence", "key", "show", "rot", "--out", new)
    assert all_ok(listener_rows(lab, old)) and all_ok(listener_rows(lab, new))
    time.sleep(max(0.0, meta["previous_until"] - time.time()) + 1.5)
    assert none_ok(listener_rows(lab, old))
    assert all_ok(listener_rows(lab, new))
    assert (
        Path(lab.cfg.host_dir("host1") / old.lstrip("/")).read_text()
        != Path(lab.cfg.host_dir("host1") / new.lstrip("/")).read_text()
    )
