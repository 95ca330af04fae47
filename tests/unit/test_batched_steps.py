"""What one step of the batched scheduler puts into its ``llama_batch`` (``StepBuilder``): the
decode tokens of the running streams, prompt chunks within the step budget, and a step of its own
for a prompt chunk that ends its prompt (never two such steps in a row)."""

from __future__ import annotations

import threading

from egemma.engines.base import GenerationRequest, GenerationStats, SamplingParams
from egemma.engines.batchsteps import ActiveSequence, StepBuilder
from egemma.engines.kvslots import KvSlot

STEP = 8


class FakeBatch:
    """The fields of a ``llama_batch`` that ``_add`` writes."""

    def __init__(self, size: int = 64) -> None:
        self.n_tokens = 0
        self.token = [0] * size
        self.pos = [0] * size
        self.n_seq_id = [0] * size
        self.seq_id = [[0] for _ in range(size)]
        self.logits = [False] * size


def engine() -> StepBuilder:
    return StepBuilder(FakeBatch(), STEP)


def sequence(seq_id: int, pending: int, cached: int = 3) -> ActiveSequence:
    prompt = tuple(range(100, 100 + cached + pending))
    request = GenerationRequest(prompt, SamplingParams(max_tokens=4), threading.Event())
    slot = KvSlot(seq_id, list(prompt[:cached]))
    pending = list(prompt[cached:])
    seq = ActiveSequence(request, GenerationStats(), lambda item: None, slot, None, pending)
    seq.last = 7
    return seq


def batch_of(eng: StepBuilder) -> list[tuple[int, int]]:
    """(sequence id, token) of every batch entry."""
    b = eng.batch
    return [(b.seq_id[i][0], b.token[i]) for i in range(b.n_tokens)]


def test_streams_decode_beside_a_long_prompt_chunk() -> None:
    eng = engine()
    a, b, long = sequence(0, 0), sequence(1, 0), sequence(2, 20)
    outputs = eng.fill([a, b, long])
    entries = batch_of(eng)
    assert entries[:2] == [(0, 7), (1, 7)]  # the running streams' next tokens first
    assert len(entries) == 2 + STEP  # then one budget of the prompt, which does not end yet
    assert [seq for seq, _ in outputs] == [a, b]
    assert len(long.pending) == 20 - STEP


def test_a_prompt_that_ends_gets_a_step_of_its_own_then_the_streams_go_on() -> None:
    eng = engine()
    a, b, short = sequence(0, 0), sequence(1, 0), sequence(2, 5)
    outputs = eng.fill([a, b, short])
    assert [sid for sid, _ in batch_of(eng)] == [2] * 5  # no decode tokens in this step
    assert [(seq, index) for seq, index in outputs] == [(short, 4)]  # its last token has logits
    assert eng.batch.logits[4]
    assert not any(eng.batch.logits[:4])

    newcomer = sequence(3, 2)  # another short prompt right behind: the streams are not held again
    short.pending, short.last = [], 9
    outputs = eng.fill([a, b, short, newcomer])
    assert [sid for sid, _ in batch_of(eng)] == [0, 1, 2, 3, 3]
    assert [seq for seq, _ in outputs] == [a, b, short, newcomer]
    outputs = eng.fill([a, b, short])  # and then decode steps as usual
    assert [sid for sid, _ in batch_of(eng)] == [0, 1, 2]


def test_a_prompt_alone_is_one_ordinary_step() -> None:
    eng = engine()
    only = sequence(0, 5)
    assert [seq for seq, _ in eng.fill([only])] == [only]
    assert eng.prompt_first  # nothing was held back, so the next ending prompt may go first
