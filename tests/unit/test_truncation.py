"""``truncation: "auto"`` by bisection keeps exactly what dropping one turn at a time kept."""

from __future__ import annotations

import random

from egemma.services.prompting.plan import PromptPlan
from egemma.services.prompting.toolcalls import TextParser
from egemma.services.prompting.types import Turn
from egemma.services.responses.truncation import _without_orphans, truncate


def _plan(turns: list[Turn]) -> PromptPlan:
    # One token per character of text and name, plus a few per turn, like a template would;
    # each turn's tokens carry its position, so equal token lists mean the same turns were kept.
    tokens = [
        hash((t, i)) % 10_000
        for i, t in enumerate(turns)
        for _ in range(len(t.text) + len(t.name or "") + 4)
    ]
    return PromptPlan(tokens, (), TextParser)


def _linear(turns: list[Turn], n_ctx: int, max_tokens: int | None) -> list[int]:
    """The former algorithm: drop the oldest droppable turn and its orphans, re-render, repeat."""
    need = max_tokens or 1
    turns = list(turns)
    plan = _plan(turns)
    while len(plan.tokens) + need > n_ctx:
        droppable = [i for i, t in enumerate(turns) if t.kind not in ("system", "developer")]
        if len(droppable) <= 1:
            break
        del turns[droppable[0]]
        turns = _without_orphans(turns)
        plan = _plan(turns)
    return plan.tokens


def _conversation(rng: random.Random, n: int) -> list[Turn]:
    turns = [Turn("system", "s" * rng.randint(0, 30))]
    for i in range(n):
        kind = rng.choice(["user", "assistant", "tool", "developer"])
        if kind == "tool":
            call = f"call_{i}"
            turns.append(Turn("tool_call", name="f", call_id=call, arguments="{}"))
            turns.append(Turn("tool_result", "r" * rng.randint(1, 40), name="f", call_id=call))
        else:
            turns.append(Turn(kind, "x" * rng.randint(1, 80)))  # type: ignore[arg-type]
    return turns


def test_bisection_matches_dropping_one_turn_at_a_time() -> None:
    rng = random.Random(7)
    for _ in range(400):
        turns = _conversation(rng, rng.randint(0, 30))
        n_ctx = rng.randint(20, 1500)
        max_tokens = rng.choice([None, 1, 16, 100])
        renders: list[int] = []

        def plan_for(kept: list[Turn], renders: list[int] = renders) -> PromptPlan:
            renders.append(1)
            return _plan(kept)

        got = truncate(plan_for, turns, n_ctx, max_tokens)
        assert got.tokens == _linear(turns, n_ctx, max_tokens)


def test_a_long_history_costs_a_few_renders() -> None:
    turns = [Turn("user", "hello there " * 3) for _ in range(6000)]
    renders: list[int] = []

    def plan_for(kept: list[Turn]) -> PromptPlan:
        renders.append(1)
        return _plan(kept)

    plan = truncate(plan_for, turns, n_ctx=4096, max_tokens=256)
    assert len(plan.tokens) + 256 <= 4096
    assert len(renders) <= 16
