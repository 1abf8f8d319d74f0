"""Tests that kill surviving mutants of the key scopes and the key store
(scripts/mutation.sh keys; docs/testing.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmha.fence import agent
from kvmha.fence.keys import KeyStore, Scope, Target, write_private


def test_a_dc_scope_allows_its_own_data_centre_only() -> None:
    s = Scope("dc", ("qa",))
    assert s.allows(Target("vm1", dc="qa"))
    assert not s.allows(Target("vm1", dc="dev"))
    assert not s.allows(Target("vm1"))


def test_a_bad_key_file_is_reported_once_not_at_every_reload(tmp_path: Path) -> None:
    warnings: list[str] = []
    store = KeyStore(str(tmp_path), warnings.append)
    write_private(tmp_path / "a-broken.key", "name=broken\n")  # no secret, no scope
    write_private(tmp_path / "gc1.key", agent.key_text("gc1", os.urandom(32), {"tag": "t"}))
    store.reload(force=True)
    assert len(warnings) == 1 and "a-broken.key" in warnings[0]  # at once
    store.reload(force=True)
    assert len(warnings) == 1  # not again
    assert store.get("gc1") is not None  # a bad file does not hide the ones after it
    assert str(tmp_path / "a-broken.key") in store.problems()


def test_write_private_leaves_no_temporary_file_when_it_fails(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(OSError):
        write_private(target, agent.key_text("k", os.urandom(32)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_the_all_scope_allows_everything() -> None:
    assert Scope("all", ()).allows(Target("anything", uuid="u"))


def test_a_key_file_added_later_is_found(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path), lambda msg: None)
    assert store.get("late") is None
    text = agent.key_text("late", os.urandom(32), {"domains": "vm1"})
    write_private(tmp_path / "late.key", text)
    found = store.get("late")
    assert found is not None and found.scope == Scope("domains", ("vm1",))


def test_write_private_creates_the_file_0600_from_the_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No window in which the key is readable by others: the file is created 0600 (the
    chmod after it is only a second guard)."""
    monkeypatch.setattr(os, "chmod", lambda path, mode: None)
    old = os.umask(0)
    try:
        write_private(tmp_path / "k.key", agent.key_text("k", os.urandom(32)))
    finally:
        os.umask(old)
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600


def test_write_private_makes_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "kvmha" / "fence" / "k.key"
    write_private(path, agent.key_text("k", os.urandom(32)))
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_hosts_key_must_be_named_as_one(tmp_path: Path) -> None:
    from kvmha.fence.agent import KeyFileError
    from kvmha.fence.keys import load_host_key

    good, bad = tmp_path / "hosts.key", tmp_path / "guest.key"
    write_private(good, agent.key_text("@hosts", os.urandom(32)))
    write_private(bad, agent.key_text("gc1", os.urandom(32)))
    assert load_host_key(str(good)).name == "@hosts"
    with pytest.raises(KeyFileError, match="must start with '@'"):
        load_host_key(str(bad))


def test_other_files_in_the_key_directory_do_not_hide_keys(tmp_path: Path) -> None:
    (tmp_path / "00-README").write_text("not a key\n")
    (tmp_path / ".gc0.key.tmp").write_text("half written\n")
    # a hidden file named like a key: an editor's or a half-done install's, never loaded
    write_private(tmp_path / ".gc2.key", agent.key_text("gc2", os.urandom(32), {"tag": "t"}))
    write_private(tmp_path / "gc1.key", agent.key_text("gc1", os.urandom(32), {"tag": "t"}))
    warnings: list[str] = []
    store = KeyStore(str(tmp_path), warnings.append)
    assert [k.key.name for k in store.all()] == ["gc1"]
    assert store.problems() == {} and warnings == []


def test_an_unknown_scope_kind_allows_nothing() -> None:
    assert not Scope("bogus", ("vm1",)).allows(Target("vm1"))


def test_a_forced_reload_sees_a_key_rewritten_in_place(tmp_path: Path) -> None:
    """reload(force=True) rereads even when the directory looks unchanged (a file
    rewritten in place does not change the directory's mtime)."""
    path = tmp_path / "gc1.key"
    write_private(path, agent.key_text("gc1", b"\x01" * 32, {"tag": "t"}))
    store = KeyStore(str(tmp_path), lambda msg: None)
    assert store.get("gc1").key.secret == b"\x01" * 32  # type: ignore[union-attr]
    stamp = os.stat(tmp_path).st_mtime_ns
    with open(path, "w") as f:  # in place: same inode, same directory
        f.write(agent.key_text("gc1", b"\x02" * 32, {"tag": "t"}))
    assert os.stat(tmp_path).st_mtime_ns == stamp
    store.reload(force=True)
    assert store.get("gc1").key.secret == b"\x02" * 32  # type: ignore[union-attr]


def test_write_private_never_writes_through_a_planted_temporary_file(tmp_path: Path) -> None:
    """O_EXCL: a symlink planted at the temporary name is not followed."""
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    planted = tmp_path / f".k.key.{os.getpid()}.tmp"
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_private(tmp_path / "k.key", agent.key_text("k", os.urandom(32)))
    assert victim.read_text() == "untouched\n"
    assert not (tmp_path / "k.key").exists()


def test_a_missing_key_directory_is_no_keys_not_an_error(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path / "nonexistent"), lambda msg: None)
    store.reload(force=True)
    assert store.get("gc1") is None and store.all() == []


def test_a_key_file_named_after_another_key_is_refused_and_hides_nothing(tmp_path: Path) -> None:
    write_private(tmp_path / "a.key", agent.key_text("other", os.urandom(32), {"tag": "t"}))
    write_private(tmp_path / "gc1.key", agent.key_text("gc1", os.urandom(32), {"tag": "t"}))
    warnings: list[str] = []
    store = KeyStore(str(tmp_path), warnings.append)
    assert [k.key.name for k in store.all()] == ["gc1"]
    assert "file name does not match name=other" in store.problems()[str(tmp_path / "a.key")]
    assert len(warnings) == 1
