"""Export a local Hugging Face sequence-classification folder (a cross-encoder such as
ms-marco-MiniLM or bge-reranker, one label) to ONNX for ``/v1/rerank``.

Build-time only, like ``export.py``: needs the ``export`` extra and never downloads. Writes
``model.onnx`` (output ``logits``), ``tokenizer.json`` and ``egemma-reranker.json``. The graph
is checked against the PyTorch model's logits on fixed (query, document) pairs before the folder
is written; the largest difference is recorded in the facts file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from egemma.engines.onnx_rerank import RERANK_FACTS_FILE, RERANK_FACTS_VERSION
from egemma.export import ExportError, _offline, _progress, source_sha256

log = logging.getLogger(__name__)

QUERIES = ("how do I reset my password?", "東京の人口", "rate limit 429")
DOCUMENTS = (
    "Open Settings, choose Account, then Reset password; a link is mailed to you.",
    "Tokyo has about fourteen million inhabitants.",
    "OK",
    "A server answers 429 with a Retry-After header when a client sends too much. " * 8,
    "def add(a: int, b: int) -> int:\n    return a + b",
)
MAX_LOGIT_DIFF = 1e-3  # fp32 ONNX vs PyTorch; measured ~1e-6 on BERT-style models


@dataclass(frozen=True)
class RerankExportOptions:
    name: str | None = None
    force: bool = False


def _max_length(tok: Any, hf_cfg: dict[str, Any]) -> int:
    """The tokenizer's limit, capped by the positions the model has (tokenizers often say
    1e30 for "no limit")."""
    positions = int(hf_cfg.get("max_position_embeddings") or 512)
    declared = int(min(getattr(tok, "model_max_length", positions) or positions, 1 << 20))
    return max(8, min(declared, positions))


def _torch_logits(model: Any, tok: Any, max_len: int) -> np.ndarray:
    import torch

    pairs = [(q, d) for q in QUERIES for d in DOCUMENTS]
    batch = tok(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        padding=True,
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
    )
    with torch.no_grad():
        out: np.ndarray = model(**batch).logits[:, 0].float().numpy()
    return out


def _onnx_logits(folder: Path) -> np.ndarray:
    from egemma.engines.onnx_rerank import OnnxRerankEngine

    engine = OnnxRerankEngine.load(folder, ["CPUExecutionProvider"])
    try:
        return np.concatenate([engine.score(q, list(DOCUMENTS))[0] for q in QUERIES])
    finally:
        engine.close()


def _load(src: Path) -> tuple[Any, Any, dict[str, Any]]:
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError as exc:
        raise ExportError(
            f"the export needs the 'export' extra ({exc.name} is missing): "
            "pip install torch==2.13.0 && pip install -e '.[export]'"
        ) from None
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{src} is not a Hugging Face model folder (no config.json)")
    hf_cfg: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8"))
    labels = len(hf_cfg.get("id2label") or {}) or int(hf_cfg.get("num_labels", 0) or 0)
    if labels != 1:
        raise ExportError(f"a reranker has one output label; {src.name} has {labels or 'none'}")
    tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True)  # type: ignore[no-untyped-call]
    if not getattr(tok, "is_fast", False):
        raise ExportError(f"{src.name} has no fast tokenizer (tokenizer.json) to serve with")
    model = AutoModelForSequenceClassification.from_pretrained(str(src), local_files_only=True)
    model.eval()
    return model, tok, hf_cfg


def export_reranker(
    src: Path, dest: Path, opts: RerankExportOptions | None = None
) -> dict[str, Any]:
    """Export ``src`` (a local sequence-classification folder) into ``dest``; returns the facts."""
    opts = opts or RerankExportOptions()
    src, dest = src.expanduser().resolve(), dest.expanduser().resolve()
    if dest.exists() and not opts.force:
        raise ExportError(f"{dest} exists; pass --force to replace it")
    _offline()
    started = time.perf_counter()
    _progress(1, 4, f"reading {src}")
    model, tok, hf_cfg = _load(src)
    from optimum.exporters.onnx import main_export

    max_len = _max_length(tok, hf_cfg)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model_type = str(hf_cfg.get("model_type", "unknown"))
    _progress(2, 4, f"exporting the ONNX graph with optimum ({model_type})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings; the graph is checked numerically below
        main_export(
            str(src),
            str(tmp),
            task="text-classification",
            library_name="transformers",
            do_validation=False,
            device="cpu",
        )
    if not (tmp / "tokenizer.json").is_file():
        tok.backend_tokenizer.save(str(tmp / "tokenizer.json"))
    facts: dict[str, Any] = {
        "format_version": RERANK_FACTS_VERSION,
        "name": opts.name or src.name,
        "architecture": model_type,
        "max_seq_length": max_len,
        "pad_token_id": int(tok.pad_token_id if tok.pad_token_id is not None else 0),
        "output": "logits",
        "onnx_file": "model.onnx",
        "source_path": str(src),
        "source_sha256": source_sha256(src),
    }
    (tmp / RERANK_FACTS_FILE).write_text(json.dumps(facts, indent=2), encoding="utf-8")
    _progress(3, 4, "checking ONNX logits against PyTorch")
    diff = float(np.abs(_torch_logits(model, tok, max_len) - _onnx_logits(tmp)).max())
    facts["check"] = {"pairs": len(QUERIES) * len(DOCUMENTS), "max_abs_logit_diff": diff}
    if diff > MAX_LOGIT_DIFF:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"exported graph disagrees with PyTorch (max logit diff {diff:.2e})")
    (tmp / RERANK_FACTS_FILE).write_text(json.dumps(facts, indent=2), encoding="utf-8")
    _progress(4, 4, f"writing {dest}")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
    log.info(
        "exported %s → %s in %.1f s (max logit diff vs PyTorch %.2e)",
        src,
        dest,
        time.perf_counter() - started,
        diff,
    )
    return facts
