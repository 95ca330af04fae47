"""The first-start key rule for replicas (README "Scaling out"): never one key per replica."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from egemma.security import KeyProvisionError, provision_key


def test_configured_key_wins_and_writes_nothing(tmp_path: Path) -> None:
    assert provision_key("k-configured", tmp_path, shared_store=True) == ("k-configured", False)
    assert list(tmp_path.iterdir()) == []


def test_shared_store_without_a_shared_key_refuses_to_generate(tmp_path: Path) -> None:
    with pytest.raises(KeyProvisionError, match="WORKBENCH_API_KEY_FILE"):
        provision_key(None, tmp_path / "replica-a", shared_store=True)
    assert not (tmp_path / "replica-a" / "api_key").exists()


def test_shared_store_keeps_an_existing_data_dir_key(tmp_path: Path) -> None:
    (tmp_path / "api_key").write_text("egk-existing\n")
    assert provision_key(None, tmp_path, shared_store=True) == ("egk-existing", False)


def _provision(args: tuple[str, str]) -> tuple[str, bool]:
    data_dir, key_file = args
    return provision_key(None, Path(data_dir), Path(key_file), shared_store=True)


def test_replicas_racing_on_one_key_file_agree(tmp_path: Path) -> None:
    shared = tmp_path / "secrets" / "api_key"
    jobs = [(str(tmp_path / f"replica-{n}"), str(shared)) for n in range(6)]
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        results = pool.map(_provision, jobs)
    keys = {key for key, _ in results}
    assert len(keys) == 1
    assert sum(generated for _, generated in results) == 1  # one banner, from the winner
    assert shared.read_text().strip() == keys.pop()
    assert oct(shared.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in shared.parent.iterdir()] == ["api_key"]  # no leftovers
