"""scripts/check_flake.py (make flake-check): the flake's inputs are pinned to exact commits."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit
NIXPKGS_PIN = "github:NixOS/nixpkgs/4bd9165a9165d7b5e33ae57f3eecbcb28fb231c9"


def flake_check(flake_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_flake.py"), str(flake_dir / "flake.nix")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def copy_flake(dest: Path, flake: str) -> Path:
    for name in ("pyproject.toml", "uv.lock", "flake.lock"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "personas", dest / "personas")
    (dest / "flake.nix").write_text(flake)
    return dest


def test_the_shipped_flake_passes() -> None:
    proc = flake_check(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert NIXPKGS_PIN in (ROOT / "flake.nix").read_text()


def test_a_branch_input_fails(tmp_path: Path) -> None:
    flake = (ROOT / "flake.nix").read_text()
    assert NIXPKGS_PIN in flake
    unpinned = flake.replace(NIXPKGS_PIN, "github:NixOS/nixpkgs/nixos-unstable")
    proc = flake_check(copy_flake(tmp_path, unpinned))
    assert proc.returncode == 1
    assert "input 'nixpkgs' is not pinned to a commit" in proc.stdout + proc.stderr


def test_a_missing_lock_fails(tmp_path: Path) -> None:
    copy_flake(tmp_path, (ROOT / "flake.nix").read_text())
    (tmp_path / "flake.lock").unlink()
    proc = flake_check(tmp_path)
    assert proc.returncode == 1
    assert "flake.lock is missing" in proc.stdout + proc.stderr
