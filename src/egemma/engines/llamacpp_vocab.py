"""A GGUF's vocabulary without its weights: tokenizing, special tokens and grammar checks for a
model that is configured but not loaded (``llama_model_params.vocab_only``; no context, a few
MB). Prompts are built and checked with it, so a request is validated before its model loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from egemma.engines.base import GrammarError, SpecialTokens
from egemma.engines.llamacpp import MAX_GBNF_BYTES, _property_order


class VocabModel:
    """The tokenizer half of a ``LlamaChatEngine``, loaded alone."""

    def __init__(self, path: Path) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaModel

        self._llama_cpp = llama_cpp
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model: Any = LlamaModel(path_model=str(path), params=params, verbose=False)
        self.metadata: dict[str, str] = dict(self._model.metadata())
        self.architecture = self.metadata.get("general.architecture", "")
        self.chat_template: str | None = self.metadata.get("tokenizer.chat_template")
        bos, eos = self._model.token_bos(), self._model.token_eos()
        self.special = SpecialTokens(
            bos_id=bos,
            eos_id=eos,
            bos_text=self._token_text(bos),
            eos_text=self._token_text(eos),
            add_bos=self.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false",
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._model.detokenize([token], special=True)).decode("utf-8", "replace")

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        tokens: list[int] = self._model.tokenize(
            text.encode("utf-8", "surrogatepass"), False, special
        )
        return tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        return bytes(self._model.detokenize(list(tokens))).decode("utf-8", "replace")

    def token_id(self, text: str) -> int | None:
        ids = self.tokenize(text, special=True)
        return ids[0] if len(ids) == 1 else None

    def check_grammar(self, json_schema: str) -> None:
        """As ``LlamaChatEngine.check_grammar``, against the vocabulary alone."""
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            gbnf = json_schema_to_gbnf(
                json_schema, prop_order=_property_order(json.loads(json_schema))
            )
        except Exception as exc:  # the converter raises anything from KeyError to RecursionError
            raise GrammarError(
                f"llama.cpp cannot build a grammar from this schema: {exc}"
            ) from None
        if len(gbnf) > MAX_GBNF_BYTES:
            raise GrammarError(f"The schema's grammar exceeds {MAX_GBNF_BYTES} bytes.")
        sampler = self._llama_cpp.llama_sampler_init_grammar(
            self._model.vocab, gbnf.encode("utf-8"), b"root"
        )
        if not sampler:
            raise GrammarError("llama.cpp could not parse the grammar built from this schema.")
        self._llama_cpp.llama_sampler_free(sampler)

    def close(self) -> None:
        self._model.close()
