"""EmbeddingGemma-300m in fp16 on ONNX Runtime CPU: is it faster than fp32, and does it keep the
cosine gate (≥ 0.9999 vs sentence-transformers, every task prompt, every Matryoshka size)?

The fp16 graph is converted from the fp32 export with ONNX Runtime's own converter
(``onnxruntime.transformers.float16``, inputs and outputs kept fp32), then both graphs are timed
in the same run at batch 1 and batch 32 on the same texts and compared with sentence-transformers
(PyTorch CPU, same weights). The model comes from ``../shared/models/embeddinggemma.sh`` as in
``bench_embeddinggemma.py``; when it cannot be assembled the one row says so. Same output
contract as the other ``bench_*.py``; the verdict goes to the README ("fp16").
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embeddings import row, sentences  # noqa: E402
from benchlib import log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GATE = 0.9999
MRL = (768, 512, 256, 128)
CHECK = [
    "OK",
    "How do I reset my password if I no longer have access to my email?",
    "def add(a: int, b: int) -> int:\n    return a + b",
    "東京は日本の首都です。",
    "Embeddings map text to vectors so that similar meanings end up close together. " * 3,
]


def convert(fp32: Path, dest: Path) -> Path:
    """A copy of the export folder whose graph is fp16 (I/O kept fp32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from egemma.engines.onnx import FACTS_FILE

    shutil.copytree(fp32, dest, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data"))
    model = onnx.load(str(fp32 / "model.onnx"))
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    onnx.save(half, str(dest / "model.onnx"))
    facts = json.loads((dest / FACTS_FILE).read_text(encoding="utf-8"))
    facts["quantization"] = "fp16"
    (dest / FACTS_FILE).write_text(json.dumps(facts, indent=2), encoding="utf-8")
    return dest


def _unit(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def worst_cosine(engine: Any, st: Any) -> float:
    """Min cosine to sentence-transformers over every prompt × text × Matryoshka size."""
    worst = 1.0
    for name, prefix in sorted(engine.prompts.items()):
        ours, _ = engine.encode([prefix + t for t in CHECK])
        ref = st.encode(CHECK, prompt_name=name, convert_to_numpy=True)
        for dim in MRL:
            cos = (_unit(ours[:, :dim]) * _unit(ref[:, :dim])).sum(axis=1)
            worst = min(worst, float(cos.min()))
    return worst


def rate(engine: Any, texts: list[str], batch: int, rounds: int) -> float:
    """Texts per second, median over ``rounds`` passes."""
    engine.encode(texts[:batch])  # warm
    speeds = []
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            engine.encode(texts[i : i + batch])
        speeds.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(speeds)


def measure(tmp: Path) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    from sentence_transformers import SentenceTransformer
    from tests.e2e import embeddinggemma

    from egemma.engines.onnx import OnnxEmbeddingEngine
    from egemma.settings import EmbeddingSettings

    try:
        src = embeddinggemma.source_folder()
    except embeddinggemma.ModelUnavailableError as exc:
        return [row(f"EmbeddingGemma-300m unavailable: {exc}", 0.0, None, None, "")]
    fp32_dir = embeddinggemma.onnx_folder(src)
    log("converting the fp32 export to fp16")
    fp16_dir = convert(fp32_dir, tmp / "fp16")
    settings = EmbeddingSettings(force_cpu=True, _env_file=None)  # type: ignore[call-arg]
    st = SentenceTransformer(str(src), device="cpu", local_files_only=True)
    texts = sentences("fp16 ")
    rows: list[dict[str, Any]] = []
    figures: dict[str, dict[str, float]] = {}
    for label, folder in (("fp32", fp32_dir), ("fp16", fp16_dir)):
        log(f"loading {label}")
        engine = OnnxEmbeddingEngine.load(folder, settings)
        try:
            figures[label] = {
                "cosine": worst_cosine(engine, st),
                "batch1": rate(engine, texts[:16], 1, 3),
                "batch32": rate(engine, texts, 32, 3),
            }
        finally:
            engine.close()
        log(f"{label}: {figures[label]}")
    a, b = figures["fp16"], figures["fp32"]
    rows.append(row("fp16 vs fp32, batch 1", a["batch1"], b["batch1"], ">= 1.0", "texts/s"))
    rows.append(row("fp16 vs fp32, batch 32", a["batch32"], b["batch32"], ">= 1.0", "texts/s"))
    for label in ("fp32", "fp16"):
        rows.append(
            row(
                f"{label}: min cosine vs sentence-transformers (prompts × MRL)",
                round(figures[label]["cosine"], 6),
                None,
                f">= {GATE}",
                "cosine",
            )
        )
    size = (fp16_dir / "model.onnx").stat().st_size / (fp32_dir / "model.onnx").stat().st_size
    rows.append(row("fp16 graph size vs fp32", size, None, None, "ratio of bytes"))
    return rows


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory(prefix="egemma-fp16-") as tmp:
        rows = measure(Path(tmp))
    print(json.dumps({"name": "embeddinggemma-fp16", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
