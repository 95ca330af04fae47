"""``truncation: "auto"``: drop the oldest conversation turns (never system/developer) to fit.

Dropping the oldest ``k`` droppable turns (and any tool result left without its call) shrinks
the prompt monotonically in ``k``, so the smallest ``k`` that fits is found by bisection: a
6,000-item history costs about 13 renders, not 6,000 (issue: ``truncation`` froze the server).
At least one droppable turn is always kept. Blocking: runs off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable

from egemma.services.prompting.plan import PromptPlan
from egemma.services.prompting.types import Turn


def truncate(
    plan_for: Callable[[list[Turn]], PromptPlan],
    turns: list[Turn],
    n_ctx: int,
    max_tokens: int | None,
) -> PromptPlan:
    need = max_tokens or 1
    plan = plan_for(turns)
    if len(plan.tokens) + need <= n_ctx:
        return plan
    droppable = [i for i, t in enumerate(turns) if t.kind not in ("system", "developer")]
    if len(droppable) <= 1:
        return plan

    def without(k: int) -> list[Turn]:
        gone = set(droppable[:k])
        kept = [t for i, t in enumerate(turns) if i not in gone]
        return _without_orphans(kept)

    # Invariant: dropping ``low`` does not fit; dropping ``high`` fits or is the most allowed.
    low, high = 0, len(droppable) - 1
    best: PromptPlan | None = None
    while low + 1 < high:
        mid = (low + high) // 2
        candidate = plan_for(without(mid))
        if len(candidate.tokens) + need <= n_ctx:
            high, best = mid, candidate
        else:
            low = mid
    # ``best`` is the plan for ``high`` once ``high`` moved; otherwise drop the most allowed.
    return best if best is not None else plan_for(without(high))


def _without_orphans(turns: list[Turn]) -> list[Turn]:
    calls = {t.call_id for t in turns if t.kind == "tool_call"}
    return [t for t in turns if t.kind != "tool_result" or t.call_id in calls]
