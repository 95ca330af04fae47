"""Model metadata in the shape Codex CLI reads from ``GET /v1/models?client_version=…``.

Codex (``codex-rs`` ``ModelInfo``; checked against ``@openai/codex`` 0.171.0) fetches this when
a provider sets ``model_catalog_url``, and falls back to generic metadata with a warning when a
model is missing. Besides the fields it requires (``slug``, ``display_name``,
``supported_reasoning_levels``, ``shell_type``, ``visibility``, ``supported_in_api``,
``priority``, ``base_instructions`` or ``model_messages``, ``support_verbosity``,
``truncation_policy``, ``experimental_supported_tools``) we state what makes Codex fit a local
model: its real context window, text-only input, the freeform (grammar) ``apply_patch`` tool,
the simple ``shell_command`` tool, no hosted web search, and short base instructions so the
system prompt leaves room in small contexts.
"""

from __future__ import annotations

from typing import Any

from egemma.engines.base import ChatEngine

# Our own short instructions; Codex appends its environment, permissions and tool guidance.
BASE_INSTRUCTIONS = (
    "You are a coding agent running in the user's terminal through Codex CLI, on a local "
    "model. Inspect files and run commands with the shell tool, change files with the "
    "apply_patch tool, and keep your messages short. When the task is done, say what you "
    "changed in one or two sentences."
)
_LEVELS = {
    "low": "Fast answers with little reasoning",
    "medium": "Balanced reasoning for everyday tasks",
    "high": "Deeper reasoning for hard problems",
}


def codex_model_info(
    engine: ChatEngine, *, harmony: bool, effort: str, priority: int
) -> dict[str, Any]:
    """One served chat model as a Codex ``ModelInfo``."""
    levels = [{"effort": e, "description": d} for e, d in _LEVELS.items()] if harmony else []
    default_level = (effort if effort in _LEVELS else "medium") if harmony else None
    return {
        "slug": engine.name,
        "display_name": engine.name,
        "description": f"Local {engine.architecture or 'GGUF'} model, {engine.n_ctx} tokens",
        "default_reasoning_level": default_level,
        "supported_reasoning_levels": levels,
        "shell_type": "shell_command",
        "visibility": "list",
        "supported_in_api": True,
        "priority": priority,
        "upgrade": None,
        "base_instructions": BASE_INSTRUCTIONS,
        "supports_reasoning_summaries": harmony,
        "support_verbosity": False,
        "default_verbosity": None,
        "apply_patch_tool_type": "freeform",
        # Tool output Codex puts back into the prompt: a quarter of the context at most.
        "truncation_policy": {"mode": "tokens", "limit": max(256, min(10_000, engine.n_ctx // 4))},
        # One call per turn: Harmony stops at <|call|>, a forced template call is one JSON call.
        "supports_parallel_tool_calls": False,
        "context_window": engine.n_ctx,
        "experimental_supported_tools": [],
        "input_modalities": ["text"],
        "supports_search_tool": False,
    }


def serving_info(engine: ChatEngine) -> dict[str, Any]:
    """Where a chat model runs, for ``/v1/models``: ``remote`` models (``CHAT_UPSTREAM_URL``)
    also say whether their upstream answered its last probe (``null``: not probed yet)."""
    probe = getattr(engine, "probe", None)
    if not getattr(engine, "remote", False) or probe is None:
        return {"remote": False}
    return {"remote": True, "upstream_reachable": probe.state["reachable"]}
