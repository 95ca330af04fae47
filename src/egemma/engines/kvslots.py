"""The batched engine's KV slots: which sequence a new generation goes to, and what the slots
cost in memory (read from the GGUF's shape, before anything is allocated)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class KvSlot:
    """One sequence id of the context and the tokens its KV cache holds."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    last_used: float = 0.0
    busy: bool = False
    pin: str | None = None


def common_prefix(a: list[int], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def pick_slot(
    slots: list[KvSlot], prompt: tuple[int, ...], pin: str | None = None
) -> tuple[KvSlot, int] | None:
    """The idle slot pinned to ``pin``; else an unpinned one (so pinned conversations keep
    theirs: taking one costs a state file write and its conversation a restore), a slot pinned
    to another conversation only when every idle slot is. Among those, the most prompt tokens
    reused less the cached tokens it would discard (so a shared template opening never evicts a
    conversation while an empty slot is idle), least recently used among equals. Returns it
    with the prompt tokens it can reuse."""
    best: tuple[tuple[bool, bool, int, float], KvSlot, int] | None = None
    for slot in slots:
        if slot.busy:
            continue
        n = common_prefix(slot.tokens, prompt)
        gain = n - (len(slot.tokens) - n)
        key = (pin is not None and slot.pin == pin, slot.pin is None, gain, -slot.last_used)
        if best is None or key > best[0]:
            best = (key, slot, n)
    if best is None:
        return None
    # At least one prompt token is evaluated so there are logits to sample from.
    return best[1], min(best[2], max(len(prompt) - 1, 0))


def kv_bytes(metadata: dict[str, str], tokens: int) -> int:
    """Bytes of an f16 KV cache holding ``tokens`` tokens, from the GGUF's shape."""
    arch = metadata.get("general.architecture", "")
    layers = int(metadata.get(f"{arch}.block_count", "0"))
    heads = int(metadata.get(f"{arch}.attention.head_count", "1"))
    kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", str(heads)))
    embd = int(metadata.get(f"{arch}.embedding_length", "0"))
    head_dim = int(metadata.get(f"{arch}.attention.key_length", str(embd // max(heads, 1))))
    return 2 * 2 * layers * kv_heads * head_dim * tokens


def estimate_kv(path: Path, n_ctx: int, parallel: int) -> int:
    """KV bytes of ``parallel`` slots of ``n_ctx`` tokens, reading only the GGUF's metadata."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return kv_bytes(dict(llm.metadata or {}), n_ctx * parallel)
    finally:
        llm.close()
