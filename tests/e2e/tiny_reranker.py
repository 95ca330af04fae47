"""The tiny random-weight cross-encoder as a test fixture: built by
``scripts/build_tiny_reranker.py`` (cached) and exported with ``egemma export-reranker`` once per
source hash (the export is cached beside it). Never a dependency of the product."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from egemma.engines.onnx_rerank import RERANK_FACTS_FILE
from egemma.export import source_sha256

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "scripts" / "build_tiny_reranker.py"


def _run(args: list[str]) -> str:
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[1:3])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def source_folder() -> Path:
    """The Hugging Face ``BertForSequenceClassification`` folder (one label)."""
    return Path(_run([sys.executable, str(BUILDER)]).strip().splitlines()[-1])


def onnx_folder(src: Path) -> Path:
    """``egemma export-reranker SRC DEST``, reused while the source hash matches."""
    dest = src.with_name(f"{src.name}-onnx")
    facts = dest / RERANK_FACTS_FILE
    if facts.is_file():
        current = json.loads(facts.read_text(encoding="utf-8")).get("source_sha256")
        if current == source_sha256(src):
            return dest
    _run(
        [
            sys.executable,
            "-m",
            "egemma",
            "--env-file",
            os.devnull,
            "export-reranker",
            str(src),
            str(dest),
            "--force",
            "--name",
            "tiny-cross-encoder",
        ]
    )
    return dest
