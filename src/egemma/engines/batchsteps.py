"""What one step of the batched engine decodes: the running sequences and the ``llama_batch``
that takes, in one ``llama_decode``, the next token of every decoding sequence and up to
``CHAT_STEP_TOKENS`` prompt tokens of the ones still prefilling (chunked prefill).

A step whose prompt chunk ends a prompt leaves the decode tokens out (never two such steps in a
row), so a new request's first token does not wait for the running streams' next one."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from egemma.engines.base import GenerationRequest, GenerationStats
from egemma.engines.kvslots import KvSlot

Put = Callable[[Any], None]


@dataclass
class ActiveSequence:
    """One generation on its slot: what is left of its prompt, its last token and its sink."""

    request: GenerationRequest
    stats: GenerationStats
    put: Put
    slot: KvSlot
    sampler: Any
    pending: list[int]
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    last: int = -1
    done: bool = False


class StepBuilder:
    """Fills the engine's ``llama_batch`` for one step (the scheduler thread's alone)."""

    def __init__(self, batch: Any, step_tokens: int) -> None:
        self.batch = batch
        self.step_tokens = step_tokens
        self.prompt_first = True  # False right after a step that held the decode tokens back

    def fill(self, active: list[ActiveSequence]) -> list[tuple[ActiveSequence, int]]:
        """The batch: one token per decoding sequence first, then prompt chunks up to the
        per-step budget. Returns the (sequence, batch index) pairs that want logits."""
        self.batch.n_tokens = 0
        outputs: list[tuple[ActiveSequence, int]] = []
        first = self.prompt_first and self._prompt_ends(active)
        self.prompt_first = not first
        for seq in active:
            if not first and not seq.done and not seq.pending:
                outputs.append((seq, self._add(seq, seq.last, True)))
        budget = self.step_tokens
        for seq in active:
            if seq.done or not seq.pending or budget <= 0:
                continue
            chunk, seq.pending = seq.pending[:budget], seq.pending[budget:]
            budget -= len(chunk)
            for token in chunk[:-1]:
                self._add(seq, token, False)
            index = self._add(seq, chunk[-1], not seq.pending)
            if not seq.pending:
                outputs.append((seq, index))
        return outputs

    def _prompt_ends(self, active: list[ActiveSequence]) -> bool:
        """Whether decoding streams run beside a prompt chunk that ends its prompt (the first
        prefilling sequence takes the step's budget first)."""
        decoding = any(not s.done and not s.pending for s in active)
        for seq in active:
            if not seq.done and seq.pending:
                return decoding and len(seq.pending) <= self.step_tokens
        return False

    def _add(self, seq: ActiveSequence, token: int, logits: bool) -> int:
        batch = self.batch
        n = batch.n_tokens
        batch.token[n] = token
        batch.pos[n] = len(seq.slot.tokens)
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = seq.slot.seq_id
        batch.logits[n] = logits
        batch.n_tokens = n + 1
        seq.slot.tokens.append(token)
        return int(n)
