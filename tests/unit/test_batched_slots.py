"""Which KV slot the batched engine gives a new generation (``pick_slot``)."""

from __future__ import annotations

from egemma.engines.kvslots import KvSlot, pick_slot


def slot(seq_id: int, tokens: list[int], pin: str | None = None, used: float = 0.0) -> KvSlot:
    return KvSlot(seq_id, list(tokens), last_used=used, pin=pin)


def test_the_slot_pinned_to_the_request_wins_over_a_longer_prefix() -> None:
    slots = [slot(0, [1, 2, 3, 4, 5]), slot(1, [1, 9], pin="conv")]
    picked = pick_slot(slots, (1, 2, 3, 4, 5, 6), pin="conv")
    assert picked is not None
    assert picked[0].seq_id == 1
    assert picked[1] == 1


def test_most_reuse_among_unpinned_then_least_discarded() -> None:
    slots = [slot(0, [1, 2], used=5.0), slot(1, [1, 2, 3], used=9.0), slot(2, [7], used=1.0)]
    picked = pick_slot(slots, (1, 2, 3, 4))
    assert picked is not None
    assert (picked[0].seq_id, picked[1]) == (1, 3)
    picked = pick_slot(slots, (8, 8))
    assert picked is not None
    assert picked[0].seq_id == 2  # no prefix anywhere: the slot that discards least


def test_a_shared_opening_does_not_evict_a_conversation_while_a_slot_is_empty() -> None:
    slots = [slot(0, [1, 2, 3, 4, 5, 6, 7, 8]), slot(1, [])]
    picked = pick_slot(slots, (1, 2, 9, 9))
    assert picked is not None
    assert (picked[0].seq_id, picked[1]) == (1, 0)
    picked = pick_slot(slots, (1, 2, 3, 4, 5, 6, 7, 8, 9))  # its continuation goes home
    assert picked is not None
    assert (picked[0].seq_id, picked[1]) == (0, 8)


def test_equal_slots_go_least_recently_used_first() -> None:
    slots = [slot(0, [5], used=9.0), slot(1, [6], used=2.0)]
    picked = pick_slot(slots, (7,))
    assert picked is not None
    assert picked[0].seq_id == 1


def test_another_conversations_pinned_slot_is_spared_while_an_unpinned_one_is_idle() -> None:
    # The pinned slot shares a longer prefix (the chat template's opening) than the empty one,
    # yet taking it would evict that conversation: the empty slot goes first.
    slots = [slot(0, [1, 2, 3, 4], pin="other"), slot(1, [])]
    picked = pick_slot(slots, (1, 2, 3, 9))
    assert picked is not None
    assert (picked[0].seq_id, picked[1]) == (1, 0)
    slots[1].busy = True
    picked = pick_slot(slots, (1, 2, 3, 9))
    assert picked is not None
    assert (picked[0].seq_id, picked[1]) == (0, 3)


def test_every_slot_busy_means_wait() -> None:
    slots = [slot(0, [1])]
    slots[0].busy = True
    assert pick_slot(slots, (1, 2)) is None


def test_one_prompt_token_is_always_evaluated() -> None:
    picked = pick_slot([slot(0, [1, 2, 3])], (1, 2, 3))
    assert picked is not None
    assert picked[1] == 2
