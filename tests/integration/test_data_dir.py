"""DATA_DIR: created owner-only, its store files 0600, and an unwritable one stops startup with one
line (issue 15; issue 18 item 14)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from egemma.app import create_app
from egemma.datadir import DataDirError, prepare_data_dir
from egemma.runtime import Engines
from tests.conftest import make_settings

KEY = "data-dir-test-key-0123456789"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def store_one_conversation(data: Path, **env: str) -> dict[str, int]:
    """Start the app on ``data``, write through the store and report the modes while it is open."""
    settings = make_settings(DATA_DIR=str(data), **env)
    app = create_app(settings, engines=Engines())
    key = env.get("WORKBENCH_API_KEY") or (data / "api_key").read_text().strip()
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            resp = await client.post(
                "/v1/conversations",
                json={"metadata": {"k": "v"}},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert resp.status_code == 200, resp.text
            names = ("egemma.db", "egemma.db-wal", "egemma.db-shm")
            return {name: mode(data / name) for name in names if (data / name).exists()}


@pytest.mark.anyio
@pytest.mark.parametrize("key_env", [{"WORKBENCH_API_KEY": KEY}, {}], ids=["given", "generated"])
async def test_stored_data_is_owner_only(tmp_path: Path, key_env: dict[str, str]) -> None:
    data = tmp_path / "fresh" / "data"
    modes = await store_one_conversation(data, **key_env)
    assert mode(data) == 0o700
    assert modes["egemma.db"] == 0o600
    assert modes.get("egemma.db-wal", 0o600) == 0o600
    assert modes.get("egemma.db-shm", 0o600) == 0o600
    assert "egemma.db-wal" in modes  # WAL is on while the store is open
    if not key_env:
        assert mode(data / "api_key") == 0o600


@pytest.mark.anyio
async def test_an_older_world_readable_store_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await store_one_conversation(data, WORKBENCH_API_KEY=KEY)
    os.chmod(data / "egemma.db", 0o644)
    modes = await store_one_conversation(data, WORKBENCH_API_KEY=KEY)
    assert modes["egemma.db"] == 0o600


def test_an_existing_data_dir_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    os.chmod(shared, 0o750)
    assert prepare_data_dir(shared) == shared
    assert mode(shared) == 0o750
    assert list(shared.iterdir()) == []  # the write check leaves nothing behind


def test_a_file_in_the_way_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    with pytest.raises(DataDirError, match="exists and is not a directory"):
        prepare_data_dir(blocker)


def serve_without_write_access(data: Path) -> subprocess.CompletedProcess[str]:
    """``egemma serve`` on a ``data`` it may not write: a read-only folder for a normal user; for
    root (CI) a folder of another uid, with the capabilities that let root ignore that dropped."""
    data.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root without setpriv (util-linux) cannot be denied a write")
        os.chown(data, 10001, 10001)
        os.chmod(data, 0o755)
        prefix = [setpriv, "--bounding-set=-dac_override,-fowner", "--"]
    else:
        os.chmod(data, 0o555)
    env = {"PATH": os.environ.get("PATH", ""), "DATA_DIR": str(data), "HOME": str(data)}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "egemma", "--env-file", "/nonexistent", "serve"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_unwritable_data_dir_stops_startup_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    try:
        proc = serve_without_write_access(data)
    finally:
        os.chmod(data, 0o755)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"egemma: DATA_DIR {data} is not writable by uid {os.geteuid()}")
    assert "chown" in lines[0]
    assert list(data.iterdir()) == []  # nothing was written: no key, no store
