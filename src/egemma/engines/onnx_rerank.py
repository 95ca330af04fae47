"""Cross-encoder reranking on ONNX Runtime, for folders made by ``egemma export-reranker``
(``model.onnx``, ``tokenizer.json`` and ``egemma-reranker.json``).

Each (query, document) pair is tokenized as the model was trained to read it (``[CLS] query
[SEP] document [SEP]`` with segment ids for a BERT-style model: the tokenizer's own pair
template), truncated longest side first, padded per run to its own longest pair, and run in
length-sorted runs. The graph's output is the sequence-classification head's logit (one label).
Blocking: call from a worker thread (the rerank service does).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from egemma.engines.onnx import plan_runs, session_options

log = logging.getLogger(__name__)

RERANK_FACTS_FILE = "egemma-reranker.json"
RERANK_FACTS_VERSION = 1


class RerankModelError(ValueError):
    """The folder is not a usable exported cross-encoder."""


@dataclass(frozen=True)
class RerankFacts:
    """What the export step learned about the cross-encoder (written beside ``model.onnx``)."""

    name: str
    max_seq_length: int
    pad_token_id: int = 0
    output: str = "logits"
    onnx_file: str = "model.onnx"
    source_sha256: str = ""

    @classmethod
    def read(cls, folder: Path) -> RerankFacts:
        path = folder / RERANK_FACTS_FILE
        if not path.is_file():
            raise RerankModelError(
                f"{folder} has no {RERANK_FACTS_FILE}; export it with `egemma export-reranker`"
            )
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format_version") != RERANK_FACTS_VERSION:
            raise RerankModelError(f"{path.name}: unsupported format_version")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class OnnxRerankEngine:
    """One ONNX Runtime session and its tokenizer; thread-safe like the embedding engine."""

    def __init__(
        self, facts: RerankFacts, session: ort.InferenceSession, tokenizer: Tokenizer, name: str
    ) -> None:
        self.facts = facts
        self.name = name
        self.max_length = facts.max_seq_length
        self.identity = f"{facts.source_sha256 or facts.name}:rerank"
        self._session: ort.InferenceSession | None = session
        self._tokenizer = tokenizer
        self._input_names = {i.name for i in session.get_inputs()}
        self.providers = session.get_providers()

    @classmethod
    def load(
        cls, folder: Path, providers: Sequence[str], threads: int = 0, name: str = ""
    ) -> OnnxRerankEngine:
        started = time.perf_counter()
        facts = RerankFacts.read(folder)
        model_file = folder / facts.onnx_file
        if not model_file.is_file():
            raise RerankModelError(f"{folder} has no {facts.onnx_file}")
        session = ort.InferenceSession(
            str(model_file), sess_options=session_options(threads), providers=list(providers)
        )
        outputs = {o.name for o in session.get_outputs()}
        if facts.output not in outputs:
            raise RerankModelError(f"{facts.onnx_file} has no output {facts.output!r}")
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=facts.max_seq_length, strategy="longest_first")
        engine = cls(facts, session, tokenizer, name or facts.name)
        engine.score("warm-up", ["warm " * 64, "up"])
        log.info(
            "reranker %s loaded (max %d tokens, providers %s) in %.1f s",
            engine.name,
            engine.max_length,
            ",".join(engine.providers),
            time.perf_counter() - started,
        )
        return engine

    # -- pre: tokenize pairs -----------------------------------------------------------------

    def tokenize(self, query: str, documents: Sequence[str]) -> list[Encoding]:
        pairs = [(query, d) for d in documents]
        out: list[Encoding] = self._tokenizer.encode_batch(pairs, add_special_tokens=True)
        return out

    # -- core: run ---------------------------------------------------------------------------

    def _run(self, encodings: Sequence[Encoding]) -> np.ndarray:
        longest = max(len(e.ids) for e in encodings)
        shape = (len(encodings), longest)
        ids = np.full(shape, self.facts.pad_token_id, dtype=np.int64)
        mask = np.zeros(shape, dtype=np.int64)
        types = np.zeros(shape, dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids  # segment B marks the document: the model needs it
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = types
        if self._session is None:
            raise RuntimeError(f"reranker {self.name} is closed")
        out = np.asarray(self._session.run([self.facts.output], feeds)[0], dtype=np.float32)
        return out.reshape(len(encodings), -1)[:, 0]

    def score(self, query: str, documents: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Raw logits, one per document in request order, and tokens per pair."""
        encodings = self.tokenize(query, documents)
        counts = [len(e.ids) for e in encodings]
        order = sorted(range(len(encodings)), key=counts.__getitem__)
        out = np.empty(len(encodings), dtype=np.float32)
        for start, end in plan_runs([counts[i] for i in order]):
            chunk = order[start:end]
            out[chunk] = self._run([encodings[i] for i in chunk])
        return out, counts

    def close(self) -> None:
        self._session = None
