"""``FakeChatEngine``: a deterministic, optionally slow ``ChatEngine``.

It implements the ``engines.base.ChatEngine`` Protocol and nothing else: a ChatML template,
special tokens, a character tokenizer, admission through a real ``ModelQueue``, and a scripted
answer generated one token at a time in a worker thread, checking ``cancel`` before every token
like the real engine. Counters let tests prove that a generation stopped and its slot was
released. Injected via ``create_app(..., engines=...)``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence

from egemma.engines.base import (
    AdmissionStats,
    CapabilityStatus,
    Disconnected,
    GeneratedToken,
    GenerationRequest,
    GenerationStats,
    Slot,
    SpecialTokens,
    TokenStream,
)
from egemma.engines.queue import ModelQueue
from egemma.engines.threaded import ThreadedTokenStream
from egemma.runtime import CAPABILITIES, Engines

CHATML = (
    "{%- for m in messages -%}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif -%}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_turn>", "<start_of_turn>"]
_SPECIAL_IDS = {text: i + 1 for i, text in enumerate(SPECIAL)}
_SPECIAL_RE = re.compile("|".join(re.escape(s) for s in SPECIAL))
CHAR_BASE = 1000  # ordinary text: one token per character, id CHAR_BASE + code point


class QueuedEngine:
    """Admission through a real ``ModelQueue``, as ``LlamaChatEngine`` does it."""

    def __init__(self, queue_size: int, queue_timeout: float) -> None:
        self._queue = ModelQueue(queue_size, queue_timeout)

    async def admit(self, is_disconnected: Disconnected | None = None) -> Slot:
        return await self._queue.admit(is_disconnected)

    def admission_stats(self) -> AdmissionStats:
        return self._queue.stats()

    def close_admission(self) -> None:
        self._queue.close()


class FakeChatEngine(QueuedEngine):
    """Scripted answer, ``delay`` seconds per token, ``fail_after`` raises mid-generation."""

    architecture = "llama"
    chat_template: str | None = CHATML
    special = SpecialTokens(
        bos_id=_SPECIAL_IDS["<|endoftext|>"],
        eos_id=_SPECIAL_IDS["<|im_end|>"],
        bos_text="",
        eos_text="<|im_end|>",
        add_bos=False,
    )

    def __init__(
        self,
        name: str = "fake",
        *,
        script: str = "Hello from the fake model.",
        delay: float = 0.0,
        n_ctx: int = 4096,
        queue_size: int = 8,
        queue_timeout: float = 30.0,
        fail_after: int | None = None,
        words: bool = True,
    ) -> None:
        super().__init__(queue_size, queue_timeout)
        self.name = name
        self.n_ctx = n_ctx
        self.script = script
        self.delay = delay
        self.fail_after = fail_after
        self.words = words
        self.identity = f"/fake/{name}.gguf"
        self.tokens_generated = 0
        self.generations = 0
        self.cancelled = 0
        self.running = 0
        self.prompts: list[list[int]] = []
        self.requests: list[GenerationRequest] = []
        self.closed = False
        self._lock = threading.Lock()

    def with_template(self, template: str) -> FakeChatEngine:
        """Serve a different chat template (hostile-template tests)."""
        self.chat_template = template
        return self

    # -- tokenizer ----------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        out: list[int] = []
        pos = 0
        if special:
            for match in _SPECIAL_RE.finditer(text):
                out += [CHAR_BASE + ord(c) for c in text[pos : match.start()]]
                out.append(_SPECIAL_IDS[match.group()])
                pos = match.end()
        out += [CHAR_BASE + ord(c) for c in text[pos:]]
        return out

    def detokenize(self, tokens: Sequence[int]) -> str:
        names = {i: s for s, i in _SPECIAL_IDS.items()}
        return "".join(chr(t - CHAR_BASE) if t >= CHAR_BASE else names.get(t, "") for t in tokens)

    def token_id(self, text: str) -> int | None:
        return _SPECIAL_IDS.get(text)

    def check_grammar(self, json_schema: str) -> None:
        """The fake has no grammar compiler: the schema must at least be JSON."""
        json.loads(json_schema)

    # -- generation ---------------------------------------------------------------------------

    def _pieces(self) -> list[str]:
        if not self.words:
            return list(self.script)
        return re.findall(r"\S+\s*|\s+", self.script)

    def generate(self, request: GenerationRequest) -> TokenStream:
        return ThreadedTokenStream(self._generate, request)

    def _generate(
        self, request: GenerationRequest, stats: GenerationStats
    ) -> Iterator[GeneratedToken]:
        prompt, params, cancel = request.prompt, request.params, request.cancel
        stats.prompt_tokens = len(prompt)
        stats.finish_reason = "length"
        with self._lock:
            self.generations += 1
            self.running += 1
            self.prompts.append(list(prompt))
            self.requests.append(request)
        try:
            for i, piece in enumerate(self._pieces()):
                if self.delay:
                    time.sleep(self.delay)
                if cancel.is_set():
                    stats.finish_reason = "cancelled"
                    with self._lock:
                        self.cancelled += 1
                    return
                if self.fail_after is not None and i >= self.fail_after:
                    raise RuntimeError("fake engine failure")
                if stats.completion_tokens >= params.max_tokens:
                    return
                stats.completion_tokens += 1
                with self._lock:
                    self.tokens_generated += 1
                yield GeneratedToken(CHAR_BASE + ord(piece[0]), piece)
            stats.finish_reason = "stop"
            yield GeneratedToken(self.special.eos_id, "")
        finally:
            with self._lock:
                self.running -= 1

    def close(self) -> None:
        self.closed = True
        self.close_admission()


def fake_engines(*chat: FakeChatEngine, summary: bool = False) -> Engines:
    """``Engines`` serving the given fakes (the first is the default), statuses loaded; the other
    capabilities disabled, so ``/ready`` is 200."""
    engines = Engines(chat={e.name: e for e in chat}, chat_default=chat[0].name if chat else None)
    engines.status["chat"] = CapabilityStatus(
        name=engines.chat_default or "chat",
        status="loaded" if chat else "not_loaded",
        context_length=chat[0].n_ctx if chat else None,
    )
    if summary and chat:
        engines.summary = chat[0]
        engines.status["local_summarization"] = CapabilityStatus(
            name=chat[0].name, status="loaded", context_length=chat[0].n_ctx
        )
    for key in CAPABILITIES:
        status = engines.capability(key)
        if status.status == "not_loaded":
            status.status = "disabled"
    return engines
