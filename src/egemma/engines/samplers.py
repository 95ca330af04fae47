"""One llama.cpp sampler chain per sequence: grammar, penalties, then greedy or
top-k/top-p/min-p/temperature/seeded sampling, in llama.cpp's own order."""

from __future__ import annotations

from typing import Any

from egemma.engines.base import SamplingParams


def _penalty_values(params: SamplingParams) -> tuple[float, float, float]:
    """(repeat, frequency, presence); the last two exist once the Responses surface adds them."""
    return (
        float(getattr(params, "repeat_penalty", 1.0)),
        float(getattr(params, "frequency_penalty", 0.0)),
        float(getattr(params, "presence_penalty", 0.0)),
    )


def sampler_chain(
    lc: Any, vocab: Any, n_vocab: int, gbnf: str | None, params: SamplingParams
) -> Any:
    """A new chain (the caller frees it with ``llama_sampler_free``); ``ValueError`` when
    llama.cpp cannot parse ``gbnf``."""
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    if gbnf is not None:
        grammar = lc.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not grammar:
            lc.llama_sampler_free(chain)
            raise ValueError("llama.cpp could not parse the grammar")
        lc.llama_sampler_chain_add(chain, grammar)
    repeat, freq, present = _penalty_values(params)
    if (repeat, freq, present) != (1.0, 0.0, 0.0):
        penalties = lc.llama_sampler_init_penalties(n_vocab, 64, repeat, freq, present)
        lc.llama_sampler_chain_add(chain, penalties)
    seed = getattr(params, "seed", None)
    if params.temperature <= 0.0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(params.top_k))
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(params.top_p, 1))
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(params.min_p, 1))
    lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(params.temperature))
    lc.llama_sampler_chain_add(
        chain, lc.llama_sampler_init_dist(lc.LLAMA_DEFAULT_SEED if seed is None else seed)
    )
    return chain
