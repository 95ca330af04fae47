"""llama-cpp-python in-process: one model, one context, generation on one worker thread.

The ``Llama`` context is not thread-safe (concurrent decodes segfault: llama-cpp-python #471,
#1529), so exactly one generation runs at a time; ``ModelQueue`` admits callers in FIFO order
behind ``ChatEngine.admit``. ``Llama.generate`` reuses the longest common token prefix of the
previous call's KV cache, which is what makes a second turn cheap; ``cached_prefix`` reports it
before the call.

Tokenizing is safe beside a running generation: ``Llama.tokenize``/``detokenize`` go through
``LlamaModel`` to ``llama_tokenize``/``llama_token_to_piece`` on the read-only vocabulary, never
the context (llama-server tokenizes in its HTTP threads while its slot loop decodes, too);
``tests/e2e`` checks it under load.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from egemma.engines.base import (
    AdmissionStats,
    Disconnected,
    GeneratedToken,
    GenerationRequest,
    GenerationStats,
    GrammarError,
    Slot,
    SpecialTokens,
    TokenStream,
)
from egemma.engines.queue import ModelQueue
from egemma.engines.threaded import ThreadedTokenStream
from egemma.settings import ChatSettings

log = logging.getLogger(__name__)


GRAMMAR_CACHE_SIZE = 64
MAX_GBNF_BYTES = 4 * 1024 * 1024


def _splice(frame: str, parts: Sequence[tuple[str, str]]) -> str:
    """``frame`` (GBNF with ``root``) plus each JSON Schema converted into rules named after it;
    one converter, so the shared primitives (``space``, ``string``…) are written once."""
    from llama_cpp.llama_grammar import SchemaConverter

    order = {name: i for i, name in enumerate(_property_order([json.loads(s) for _, s in parts]))}
    converter: Any = SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order=order, allow_fetch=False, dotall=False, raw_pattern=False
    )
    for name, schema in parts:
        converter.visit(converter.resolve_refs(json.loads(schema), "stdin"), name)
    rules: str = converter.format_grammar()
    # Token pieces are matched as text, so a string character could be a control token
    # ("<|end|>" ends the message mid-argument): inside a Harmony turn no "<" is followed by "|".
    return frame + _strict_strings(rules, _HARMONY_CHAR)


# llama-cpp-python's schema converter lets a JSON string hold raw control characters (a newline
# inside a string is not JSON); llama.cpp's own converter excludes them, and so do we.
_LAX_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'
_HARMONY_CHAR = r'char ::= [^"\\<\x7F\x00-\x1F] | "<"+ [^"\\<|\x7F\x00-\x1F] |'


def _strict_strings(gbnf: str, char_rule: str = _JSON_CHAR) -> str:
    return gbnf.replace(_LAX_CHAR, char_rule, 1)


def _property_order(schema: Any) -> list[str]:
    order: list[str] = []
    stack = [schema]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                order += [k for k in props if k not in order]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return order


class LlamaChatEngine:
    """A loaded GGUF with its metadata, tokenizer and FIFO: a ``ChatEngine``."""

    def __init__(self, name: str, path: Path, llm: Any, settings: ChatSettings) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.name = name
        self.path = path
        self.identity = str(path)
        self.llm = llm
        self.n_ctx: int = llm.n_ctx()
        self.metadata: dict[str, str] = dict(llm.metadata or {})
        self.architecture = self.metadata.get("general.architecture", "")
        self.chat_template: str | None = self.metadata.get("tokenizer.chat_template")
        bos, eos = llm.token_bos(), llm.token_eos()
        self.special = SpecialTokens(
            bos_id=bos,
            eos_id=eos,
            bos_text=self._token_text(bos),
            eos_text=self._token_text(eos),
            add_bos=self.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false",
        )
        self._queue = ModelQueue(settings.queue_size, settings.queue_timeout)
        # Every generation of this model runs on this one thread, so llama.cpp's OpenMP team
        # stays bound to one master thread instead of following whichever pool thread is free.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{name}")
        self._lock = threading.Lock()
        self._grammar_cache: dict[str, Any] = {}

    @classmethod
    def load(cls, name: str, path: Path, settings: ChatSettings) -> LlamaChatEngine:
        from llama_cpp import Llama

        threads = settings.n_threads or (os.cpu_count() or 1)

        def open_model(n_ctx: int) -> Any:
            return Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_gpu_layers=settings.n_gpu_layers,
                n_batch=settings.n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                use_mmap=settings.use_mmap,
                flash_attn=bool(settings.flash_attn),
                verbose=False,
            )

        llm = open_model(settings.n_ctx)
        train_ctx = llm._model.n_ctx_train()
        if settings.n_ctx > train_ctx:
            # More context than the model was trained for only wastes memory and degrades output.
            del llm
            llm = open_model(train_ctx)
        return cls(name, path, llm, settings)

    # -- tokenizer ----------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self.llm.detokenize([token], special=True)).decode("utf-8", "replace")

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        tokens: list[int] = self.llm.tokenize(
            text.encode("utf-8", "surrogatepass"), add_bos=False, special=special
        )
        return tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        return bytes(self.llm.detokenize(list(tokens))).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def token_id(self, text: str) -> int | None:
        """The id of a special token such as ``<end_of_turn>``, if it is a single token."""
        ids = self.tokenize(text, special=True)
        return ids[0] if len(ids) == 1 else None

    # -- admission ----------------------------------------------------------------------------

    async def admit(self, is_disconnected: Disconnected | None = None) -> Slot:
        return await self._queue.admit(is_disconnected)

    def admission_stats(self) -> AdmissionStats:
        return self._queue.stats()

    def close_admission(self) -> None:
        self._queue.close()

    # -- generation ---------------------------------------------------------------------------

    def cached_prefix(self, prompt: Sequence[int]) -> int:
        """Tokens of ``prompt`` already in the KV cache from the previous call."""
        previous = self.llm._input_ids[: self.llm.n_tokens]
        n = 0
        for a, b in zip(previous, prompt, strict=False):
            if a != b:
                break
            n += 1
        return min(n, max(len(prompt) - 1, 0))

    def _grammar(self, key: str, gbnf: str | None = None) -> Any:
        from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

        grammar = self._grammar_cache.get(key)
        if grammar is None:
            # Keep the schema's own property order (the converter sorts alphabetically otherwise):
            # a call's "name" must come before its "arguments" so it can be streamed.
            if gbnf is None:
                gbnf = _strict_strings(
                    json_schema_to_gbnf(key, prop_order=_property_order(json.loads(key)))
                )
            grammar = LlamaGrammar.from_string(gbnf, verbose=False)
            if len(self._grammar_cache) > GRAMMAR_CACHE_SIZE:
                self._grammar_cache.clear()
            self._grammar_cache[key] = grammar
        return grammar

    def check_grammar(self, json_schema: str) -> None:
        """Convert and parse the grammar once, so a generation cannot fail on it. Parsing reads
        only the vocabulary (safe beside a running generation); the sampler is freed at once."""
        import llama_cpp

        try:
            gbnf: str = self._grammar(json_schema)._grammar
        except Exception as exc:  # the converter raises anything from KeyError to RecursionError
            reason = f"llama.cpp cannot build a grammar from this schema: {exc}"
            raise GrammarError(reason) from None
        if len(gbnf) > MAX_GBNF_BYTES:
            self._grammar_cache.pop(json_schema, None)
            raise GrammarError(f"The schema's grammar exceeds {MAX_GBNF_BYTES} bytes.")
        sampler = llama_cpp.llama_sampler_init_grammar(
            self.llm._model.vocab, gbnf.encode("utf-8"), b"root"
        )
        if not sampler:
            self._grammar_cache.pop(json_schema, None)
            raise GrammarError("llama.cpp could not parse the grammar built from this schema.")
        llama_cpp.llama_sampler_free(sampler)

    def generate(self, request: GenerationRequest) -> TokenStream:
        return ThreadedTokenStream(self._generate, request, self._executor)

    def _generate(
        self, request: GenerationRequest, stats: GenerationStats
    ) -> Iterator[GeneratedToken]:
        """Blocking token loop on the engine's thread. Stops on an end-of-generation token, a
        stop token, the token budget, or ``cancel`` (checked before every token)."""
        prompt, params, cancel = request.prompt, request.params, request.cancel
        grammar = None
        if params.gbnf is not None and params.grammar_parts:
            framed = _splice(params.gbnf, params.grammar_parts)
            grammar = self._grammar("gbnf:" + framed, framed)
        elif params.gbnf is not None:
            grammar = self._grammar("gbnf:" + params.gbnf, params.gbnf)
        elif params.json_schema is not None:
            grammar = self._grammar(params.json_schema)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stop_ids = set(params.stop_token_ids)
        with self._lock:
            stats.prompt_tokens = len(prompt)
            stats.cached_tokens = self.cached_prefix(prompt)
            stats.finish_reason = "length"
            if cancel.is_set():
                stats.finish_reason = "cancelled"
                return
            tokens = self.llm.generate(
                list(prompt),
                top_k=params.top_k,
                top_p=params.top_p,
                min_p=params.min_p,
                temp=params.temperature,
                repeat_penalty=1.0,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                grammar=grammar,
            )
            try:
                for token in tokens:
                    if cancel.is_set():
                        stats.finish_reason = "cancelled"
                        break
                    if token in stop_ids or self.is_eog(token):
                        stats.finish_reason = "stop"
                        yield GeneratedToken(token, "")
                        break
                    stats.completion_tokens += 1
                    piece = bytes(self.llm.detokenize([token]))
                    yield GeneratedToken(token, decoder.decode(piece))
                    if stats.completion_tokens >= params.max_tokens:
                        stats.finish_reason = "length"
                        break
            finally:
                tokens.close()
            tail = decoder.decode(b"", final=True)
            if tail:
                yield GeneratedToken(-1, tail)

    def close(self) -> None:
        self._queue.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        llm, self.llm = self.llm, None
        if llm is not None:
            close = getattr(llm, "close", None)
            if callable(close):
                close()
