"""EmbeddingGemma-300m benchmark: the real weights, every figure against a same-run baseline.

- engine (ONNX Runtime) vs sentence-transformers (PyTorch CPU, same weights), batch 1 and 32;
- 32 concurrent single-text HTTP requests vs the engine's own batch-32 throughput (and the other
  HTTP rows of ``bench_embeddings.py``);
- ranking kept by the compact ``encoding_format`` values against float, on the same 64 texts:
  each text is a query (query prompt) against the other 63 as documents (document prompt);
  recall@10 of the float top 10 and Spearman of the full score list, averaged over queries.
  int8 is compared by cosine, binary by Hamming similarity, exactly as served.

The model comes from ``../shared/models/embeddinggemma.sh`` (a test/benchmark fixture, never a
dependency) and is exported with ``egemma export-embeddings`` into the same cache; when the script
cannot run here the one row says so. Same output contract as the other ``bench_*.py``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embeddings import engine_rows, http_rows, row, sentences  # noqa: E402
from benchlib import log  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share theirs: Hamming similarities tie often)."""
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    out: np.ndarray = (ends - (counts - 1) / 2.0)[inverse]
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def compact_rows(engine: Any) -> list[dict[str, Any]]:
    from egemma.services.embeddings.compact import hamming_similarity, to_bits, to_int8

    texts = sentences()
    prompts = engine.prompts
    queries, _ = engine.encode([prompts.get("query", "") + t for t in texts])
    docs, _ = engine.encode([prompts.get("document", "") + t for t in texts])
    q8, d8 = to_int8(queries).astype(np.float32), to_int8(docs).astype(np.float32)
    d8 /= np.linalg.norm(d8, axis=1, keepdims=True)
    qb, db = to_bits(queries), to_bits(docs)
    recall: dict[str, list[float]] = {"int8": [], "binary": []}
    rho: dict[str, list[float]] = {"int8": [], "binary": []}
    for i in range(len(texts)):
        others = np.array([j for j in range(len(texts)) if j != i])
        exact = docs[others] @ queries[i]
        scored = {
            "int8": d8[others] @ q8[i],
            "binary": hamming_similarity(qb[i], db[others]).astype(np.float64),
        }
        top = set(np.argsort(-exact, kind="stable")[:10])
        for fmt, scores in scored.items():
            recall[fmt].append(len(top & set(np.argsort(-scores, kind="stable")[:10])) / 10)
            rho[fmt].append(_spearman(exact, scores))
    out = []
    for fmt in ("int8", "binary"):
        log(f"{fmt}: recall@10 {np.mean(recall[fmt]):.3f}, Spearman {np.mean(rho[fmt]):.3f}")
        out.append(row(f"{fmt} vs float: recall@10", float(np.mean(recall[fmt])), 1.0, None, ""))
        out.append(row(f"{fmt} vs float: Spearman", float(np.mean(rho[fmt])), 1.0, None, ""))
    return out


def measure(tmp: Path) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    from tests.e2e import embeddinggemma

    from egemma.engines.onnx import OnnxEmbeddingEngine
    from egemma.settings import EmbeddingSettings

    try:
        src = embeddinggemma.source_folder()
    except embeddinggemma.ModelUnavailableError as exc:
        log(f"EmbeddingGemma-300m unavailable: {exc}")
        return [row(f"EmbeddingGemma-300m unavailable: {exc}", 0.0, None, None, "")]
    log(f"exporting (or reusing the export of) {src}")
    model = embeddinggemma.onnx_folder(src)
    engine = OnnxEmbeddingEngine.load(model, EmbeddingSettings(_env_file=None))  # type: ignore[call-arg]
    try:
        rows = engine_rows(engine, src, goal_batch1=">= 2.0")
        rows += compact_rows(engine)
        rows += http_rows(model, engine, tmp / "data")
    finally:
        engine.close()
    return rows


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory(prefix="egemma-bench-") as tmp:
        rows = measure(Path(tmp))
    result = {"name": "embeddinggemma", "rows": rows}
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"bench-embeddinggemma-{stamp}.json").write_text(json.dumps(result, indent=2))
    for r in rows:
        log(f"  {r['metric']}: {r['value']} {r['unit']} (baseline {r['baseline']}, ")
        log(f"      ratio {r['ratio']}, goal {r['goal']})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
