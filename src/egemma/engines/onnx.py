"""Embeddings on ONNX Runtime: tokenize → run → normalise, for folders made by
``egemma export-embeddings`` (``model.onnx``, ``tokenizer.json`` and the facts file).

Pooling (and, for EmbeddingGemma, the two dense layers) is inside the exported graph; this engine
only pads each batch to its own longest text (never to a fixed length), sorts by length so
similar texts share a run, and L2-normalises the pooled vectors. Blocking: call from a worker
thread (the embeddings service does).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from egemma.settings import EmbeddingSettings

log = logging.getLogger(__name__)

FACTS_FILE = "egemma-embedding.json"
FACTS_VERSION = 1
# Padded tokens one ONNX run may hold: attention cost grows with the padded length, so a batch of
# mixed lengths is split into length-sorted runs rather than padded to its longest member.
TOKEN_BUDGET = 8192
MAX_RUN_ROWS = 64
WARM_UP_TOKENS = 512  # longest warm-up text
RUN_OVERHEAD = 48  # one ONNX run's fixed cost, in token-equivalents (measured on MiniLM)


class EmbeddingModelError(ValueError):
    """The folder is not a usable exported embedding model."""


@dataclass(frozen=True)
class EmbeddingFacts:
    """What the export step learned about the model (written beside ``model.onnx``)."""

    name: str
    dimension: int
    max_seq_length: int
    pooling: str
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    matryoshka_dims: tuple[int, ...] = ()
    pad_token_id: int = 0
    pad_token: str = "[PAD]"
    output: str = "sentence_embedding"
    onnx_file: str = "model.onnx"
    source_sha256: str = ""
    quantization: str = "fp32"

    @classmethod
    def read(cls, folder: Path) -> EmbeddingFacts:
        path = folder / FACTS_FILE
        if not path.is_file():
            raise EmbeddingModelError(
                f"{folder} has no {FACTS_FILE}; export it with `egemma export-embeddings`"
            )
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format_version") != FACTS_VERSION:
            raise EmbeddingModelError(f"{path.name}: unsupported format_version")
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        values["matryoshka_dims"] = tuple(int(d) for d in data.get("matryoshka_dims") or ())
        values["prompts"] = dict(data.get("prompts") or {})
        return cls(**values)


def select_providers(settings: EmbeddingSettings, available: Sequence[str]) -> list[str]:
    """Providers from settings in preference order, intersected with what this build offers."""
    if settings.force_cpu:
        return ["CPUExecutionProvider"]
    wanted = [p.strip() for p in settings.providers.split(",") if p.strip()]
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")  # always a fallback for unsupported ops
    return chosen


def session_options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning worker threads starve a llama.cpp model on the same cores (measured 2.4× slower).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def plan_runs(lengths: Sequence[int]) -> list[tuple[int, int]]:
    """Split ascending ``lengths`` into contiguous runs of least padded cost.

    A run costs its fixed overhead plus rows × longest × (1 + longest/1024) (attention grows
    with the square of the padded length). Dynamic programming over the sorted lengths; each
    run holds at most ``MAX_RUN_ROWS`` rows and ``TOKEN_BUDGET`` padded tokens.
    """
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = lengths[end - 1]
        per_row = longest * (1.0 + longest / 1024.0)
        for start in range(end - 1, max(-1, end - 1 - MAX_RUN_ROWS), -1):
            rows = end - start
            if rows > 1 and rows * longest > TOKEN_BUDGET:
                break
            cost = best[start] + RUN_OVERHEAD + rows * per_row
            if cost < best[end]:
                best[end], cut[end] = cost, start
    runs: list[tuple[int, int]] = []
    end = n
    while end > 0:
        runs.append((cut[end], end))
        end = cut[end]
    return runs[::-1]


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    out: np.ndarray = vectors / norms
    return out


class OnnxEmbeddingEngine:
    """One ONNX Runtime session and its tokenizer. Thread-safe: ORT sessions allow concurrent
    ``run`` calls, and each call builds its own tokenizer output."""

    def __init__(
        self,
        folder: Path,
        facts: EmbeddingFacts,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        name: str,
    ) -> None:
        self.folder = folder
        self.facts = facts
        self.name = name
        self.dimension = facts.dimension
        self.max_length = facts.max_seq_length
        self.prompts: Mapping[str, str] = facts.prompts
        self.default_prompt_name = facts.default_prompt_name
        self.matryoshka_dims = facts.matryoshka_dims
        # Cache identity: the source weights, the quantization and the output we read.
        self.identity = f"{facts.source_sha256 or facts.name}:{facts.quantization}:{facts.output}"
        self._session: ort.InferenceSession | None = session
        self._tokenizer = tokenizer
        self._input_names = {i.name for i in session.get_inputs()}
        self.providers = session.get_providers()

    @classmethod
    def load(cls, folder: Path, settings: EmbeddingSettings) -> OnnxEmbeddingEngine:
        started = time.perf_counter()
        facts = EmbeddingFacts.read(folder)
        model_file = folder / facts.onnx_file
        if not model_file.is_file():
            raise EmbeddingModelError(f"{folder} has no {facts.onnx_file}")
        providers = select_providers(settings, ort.get_available_providers())
        session = ort.InferenceSession(
            str(model_file), sess_options=session_options(settings.threads), providers=providers
        )
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # The shipped tokenizer.json may pad and truncate to a fixed 128: use the model's real
        # maximum and pad each batch only to its own longest text.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=facts.max_seq_length)
        engine = cls(folder, facts, session, tokenizer, settings.model_name or facts.name)
        engine.warm_up()
        log.info(
            "embedding model %s loaded (%d-d, max %d tokens, %s, providers %s) in %.1f s",
            engine.name,
            engine.dimension,
            engine.max_length,
            facts.quantization,
            ",".join(engine.providers),
            time.perf_counter() - started,
        )
        return engine

    def warm_up(self) -> None:
        """First runs allocate and pick kernels; do that before the first request pays for it."""
        self.encode(["warm-up"])
        # Capped: a full 2048-token text through EmbeddingGemma-300m took about a minute on 2
        # cores, far more than the allocations it is there to make.
        self.encode(["warm " * min(self.max_length, WARM_UP_TOKENS), "up"])

    # -- pre: tokenize ---------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        out: list[Encoding] = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return out

    # -- core: run ---------------------------------------------------------------------------

    def _run(self, encodings: Sequence[Encoding]) -> np.ndarray:
        longest = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), longest), self.facts.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encodings), longest), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        if self._session is None:
            raise RuntimeError(f"embedding model {self.name} is closed")
        out = self._session.run([self.facts.output], feeds)[0]
        return np.asarray(out, dtype=np.float32)

    # -- all three ---------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Full-dimension, L2-normalised float32 vectors (n × dimension) and token counts."""
        encodings = self.tokenize(texts)
        counts = [len(e.ids) for e in encodings]
        order = sorted(range(len(encodings)), key=counts.__getitem__)
        out = np.empty((len(encodings), self.dimension), dtype=np.float32)
        for start, end in plan_runs([counts[i] for i in order]):
            chunk = order[start:end]
            out[chunk] = self._run([encodings[i] for i in chunk])
        return l2_normalise(out), counts

    def close(self) -> None:
        # Dropping the session frees its arena; ORT has no explicit close.
        self._session = None
