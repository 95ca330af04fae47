"""The keys file and the ring the server checks: hashed at rest, owner-only, reloaded on change,
failing closed when broken (issue 18, item 16)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from egemma.keys import KeyFileError, KeyRing, Limit, add_key, read_keys, revoke_key


def test_add_stores_only_a_digest_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys.json"
    key = add_key(path, "alice", limits={"chat": Limit(3, 60)})
    text = path.read_text()
    assert key not in text
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    (stored,) = read_keys(path)
    assert stored.principal.name == "alice"
    assert stored.principal.limits == {"chat": Limit(3, 60)}
    assert not stored.principal.admin
    assert list(tmp_path.glob("data/.keys.json.*.tmp")) == []


def test_ring_knows_primary_and_named_keys_and_sees_revokes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = KeyRing("primary-key-0123456789", path)
    primary = ring.lookup("primary-key-0123456789")
    assert primary is not None
    assert (primary.name, primary.admin) == ("admin", True)
    alice = add_key(path, "alice")
    bob = add_key(path, "bob", admin=True)
    found = ring.lookup(alice)
    assert found is not None
    assert (found.name, found.admin) == ("alice", False)
    found_bob = ring.lookup(bob)
    assert found_bob is not None
    assert found_bob.admin
    assert ring.lookup("egk-wrong") is None
    assert revoke_key(path, "alice")
    assert ring.lookup(alice) is None  # no restart, no explicit reload
    assert ring.lookup(bob) is not None
    assert not revoke_key(path, "alice")


def test_broken_keys_file_fails_closed_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.json"
    alice = add_key(path, "alice")
    ring = KeyRing("primary-key-0123456789", path)
    assert ring.lookup(alice) is not None
    path.write_text("{ not json")
    caplog.set_level(logging.ERROR)
    for _ in range(3):
        assert ring.lookup(alice) is None  # a revoke is never undone by a broken file
        assert ring.lookup("primary-key-0123456789") is not None
    assert len([r for r in caplog.records if "unusable" in r.getMessage()]) == 1
    path.write_text(json.dumps({"version": 1, "keys": []}))
    assert ring.lookup(alice) is None


@pytest.mark.parametrize("name", ["", "admin", "Admin", "a b", "-x", "x" * 65, "é", "../x", "a\nb"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyFileError):
        add_key(tmp_path / "keys.json", name)


def test_duplicate_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "alice")
    with pytest.raises(KeyFileError):
        add_key(path, "alice")
    assert len(read_keys(path)) == 1
