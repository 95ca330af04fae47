"""llama.cpp with several sequences in one context: continuous batching behind ``ChatEngine``.

One scheduler thread owns the context (llama.cpp contexts are not thread-safe: llama-cpp-python
#471). Each step it builds one ``llama_batch``: the next token of every decoding sequence plus
up to ``CHAT_STEP_TOKENS`` prompt tokens of the sequences still prefilling (chunked prefill, so a
long prompt never freezes running streams), calls ``llama_decode`` once and samples every
sequence with its own sampler chain (grammar, penalties, top-k/top-p/min-p, temperature, seed).
What a step holds is ``batchsteps``' (a prompt's last chunk gets a step of its own); the thread
runs ``CHAT_DECODE_NICE`` below the event loop, which then serves new requests between its steps.

KV slots remember: a finished sequence keeps its tokens in the cache, and a new generation goes
to the idle slot sharing the longest token prefix with its prompt (least recently used first on
ties), so interleaved conversations each get their prefix back (``cached_tokens``). Admission is
the same FIFO as the single engine with ``CHAT_PARALLEL`` holders; the scheduler parks a
generation whose slot is still being freed (a cancelled holder released early) until the next
step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from egemma.engines.base import (
    GeneratedToken,
    GenerationRequest,
    GenerationStats,
    SamplingParams,
    TokenStream,
)
from egemma.engines.batchsteps import ActiveSequence, Put, StepBuilder
from egemma.engines.kvslots import KvSlot, common_prefix, kv_bytes, pick_slot
from egemma.engines.kvstate import KvStateFiles, fingerprint
from egemma.engines.llamacpp import LlamaChatEngine, _splice
from egemma.engines.queue import ModelQueue
from egemma.engines.samplers import sampler_chain
from egemma.engines.threaded import LazyTokenStream, LoopSink, Outbox
from egemma.settings import BatchSettings, ChatSettings

log = logging.getLogger(__name__)

_DONE = object()
_PARK = object()


def lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority by ``nice`` (Linux, where a thread has its own nice value
    and the llama.cpp workers it starts inherit it); elsewhere, or when refused, nothing changes."""
    if nice <= 0 or sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
    except OSError as exc:
        log.warning("could not lower the decode thread's priority: %s", exc)


class BatchedTokenStream(LazyTokenStream):
    """The tokens of one sequence, pushed by the scheduler thread onto the event loop."""

    def __init__(self, engine: BatchedLlamaChatEngine, request: GenerationRequest) -> None:
        super().__init__(request)
        self._engine = engine

    async def _run(self) -> AsyncIterator[GeneratedToken]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = self._request.cancel
        put = LoopSink(queue, cancel)
        self._engine.submit(self._request, self.stats, put)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            self._engine.wake()


class BatchedLlamaChatEngine(LlamaChatEngine):
    """A GGUF served to ``CHAT_PARALLEL`` sequences at once from one context."""

    def __init__(
        self,
        name: str,
        path: Path,
        llm: Any,
        settings: ChatSettings,
        batch: BatchSettings,
        state_dir: Path | None = None,
    ) -> None:
        super().__init__(name, path, llm, settings)
        import llama_cpp

        self.parallel = batch.parallel
        self.step_tokens = batch.step_tokens
        self.n_ctx = min(settings.n_ctx, llm._model.n_ctx_train())
        self._queue = ModelQueue(settings.queue_size, settings.queue_timeout, batch.parallel)
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = self.n_ctx * self.parallel
        params.n_seq_max = self.parallel
        # One cell pool for every sequence: each stays under n_ctx tokens (``_emit``), so the
        # pool never runs out. With flash attention, which skips the masked cells, a step of
        # 4 sequences decodes 1.3x faster than with per-sequence streams (measured on the
        # shipped SmolLM2 on 2 cores, llama-cpp-python 0.3.36; README, Concurrency).
        params.kv_unified = True
        if settings.flash_attn is None:
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        params.n_batch = max(settings.n_batch, self.step_tokens + self.parallel)
        params.n_ubatch = params.n_batch
        self._ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not self._ctx:
            raise ValueError(
                f"llama.cpp could not allocate {self.parallel} KV slots of {self.n_ctx} tokens "
                f"(about {self.kv_bytes() // 2**20} MiB); lower CHAT_PARALLEL or CHAT_N_CTX."
            )
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(llm._model.vocab)
        self.slots = [KvSlot(i) for i in range(self.parallel)]
        budget = batch.kv_disk_bytes if state_dir is not None else 0
        root = (state_dir or Path()) / fingerprint(path)
        self._state = KvStateFiles(llama_cpp, self._ctx, root, budget, self.n_ctx)
        self._incoming: list[tuple[GenerationRequest, GenerationStats, LoopSink]] = []
        self._outbox = Outbox()  # what a step sends, in one hand-over per event loop
        self._cond = threading.Condition()
        self._stopping = False
        self._steps = StepBuilder(self._batch, self.step_tokens)
        self._nice = batch.decode_nice
        self._thread = threading.Thread(target=self._loop, name=f"llama-batch-{name}", daemon=True)
        self._thread.start()

    @classmethod
    def load_batched(
        cls,
        name: str,
        path: Path,
        settings: ChatSettings,
        batch: BatchSettings,
        state_dir: Path | None = None,
    ) -> BatchedLlamaChatEngine:
        from llama_cpp import Llama

        threads = settings.n_threads or (os.cpu_count() or 1)
        # This Llama keeps the weights and the tokenizer; its own context stays tiny, the
        # scheduler decodes in the multi-sequence context built in __init__.
        llm = Llama(
            model_path=str(path),
            n_ctx=256,
            n_gpu_layers=settings.n_gpu_layers,
            n_batch=256,
            n_threads=threads,
            n_threads_batch=threads,
            use_mmap=settings.use_mmap,
            flash_attn=bool(settings.flash_attn),
            verbose=False,
        )
        return cls(name, path, llm, settings, batch, state_dir)

    # -- memory ---------------------------------------------------------------------------

    def kv_bytes(self) -> int:
        """The KV cache of all slots (f16 keys and values), from the model's shape."""
        return kv_bytes(self.metadata, self.n_ctx * self.parallel)

    def slot_report(self) -> dict[str, Any]:
        with self._cond:
            cached = [len(s.tokens) for s in self.slots]
            busy = sum(s.busy for s in self.slots)
        return {
            "engine": "batched",
            "parallel": self.parallel,
            "slot_context": self.n_ctx,
            "kv_bytes": self.kv_bytes(),
            "busy_slots": busy,
            "cached_tokens": cached,
        }

    # -- generation -----------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> TokenStream:
        return BatchedTokenStream(self, request)

    def submit(self, request: GenerationRequest, stats: GenerationStats, put: LoopSink) -> None:
        with self._cond:
            if self._stopping:
                put(RuntimeError("the model is closed"))
                put(_DONE)
                return
            self._incoming.append((request, stats, put))
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _sampler(self, params: SamplingParams) -> Any:
        gbnf: str | None = None
        if params.gbnf is not None and params.grammar_parts:
            gbnf = _splice(params.gbnf, params.grammar_parts)  # a Harmony turn's tool schemas
        elif params.gbnf is not None:
            gbnf = params.gbnf
        elif params.json_schema is not None:
            gbnf = self._grammar(params.json_schema)._grammar
        return sampler_chain(self._llama_cpp, self.llm._model.vocab, self._n_vocab, gbnf, params)

    def _start(
        self, request: GenerationRequest, stats: GenerationStats, put: Put
    ) -> ActiveSequence | object:
        """Place a new generation on a slot; ``_PARK`` to retry next step (no slot free yet),
        ``_DONE`` when it already ended (cancelled, or its grammar failed)."""
        if request.cancel.is_set():
            stats.finish_reason = "cancelled"
            put(_DONE)
            return _DONE
        picked = pick_slot(self.slots, request.prompt, request.params.pin)
        if picked is None:
            return _PARK
        slot, reuse = picked
        reuse = self._restore(slot, request, reuse)
        stats.prompt_tokens = len(request.prompt)
        try:
            sampler = self._sampler(request.params)
        except Exception as exc:  # grammar failure: this stream fails, the others go on
            put(exc)
            put(_DONE)
            return _DONE
        if not self._llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, reuse, -1):
            # Partial removal is not supported by every cache (sliding-window layers).
            self._llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            reuse = 0
        del slot.tokens[reuse:]
        stats.cached_tokens = reuse
        stats.finish_reason = "length"
        slot.busy = True
        slot.pin = request.params.pin
        slot.last_used = time.monotonic()
        return ActiveSequence(request, stats, put, slot, sampler, list(request.prompt[reuse:]))

    def _restore(self, slot: KvSlot, request: GenerationRequest, reuse: int) -> int:
        """Evict ``slot`` for ``request``: a pinned slot's state goes to disk; a pinned
        request whose slot was evicted earlier (or before a restart) gets its state back."""
        pin = request.params.pin
        if slot.pin == pin:
            return reuse
        if slot.pin is not None:
            self._state.save(slot.pin, slot.seq_id, slot.tokens)
        if pin is None or not self._state.has(pin):
            return reuse
        self._llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
        slot.tokens = self._state.load(pin, slot.seq_id) or []
        log.info("restored %d KV tokens for a pinned conversation", len(slot.tokens))
        return min(common_prefix(slot.tokens, request.prompt), max(len(request.prompt) - 1, 0))

    def _finish(self, seq: ActiveSequence, reason: str) -> None:
        if seq.done:
            return
        seq.done = True
        if reason:
            seq.stats.finish_reason = reason  # type: ignore[assignment]
        tail = seq.decoder.decode(b"", final=True)
        if tail and reason != "cancelled":
            seq.put(GeneratedToken(-1, tail))
        seq.put(_DONE)
        self._llama_cpp.llama_sampler_free(seq.sampler)
        seq.slot.busy = False
        seq.slot.last_used = time.monotonic()

    def _loop(self) -> None:
        lower_priority(self._nice)  # before the first decode starts llama.cpp's workers
        active: list[ActiveSequence] = []
        while True:
            with self._cond:
                while not self._stopping and not self._incoming and not active:
                    self._cond.wait()
                if self._stopping:
                    break
                waiting, self._incoming = self._incoming, []
            active += self._place(waiting)
            try:
                self._step(active)
            except Exception as exc:  # a failed decode ends every stream in it, not the server
                log.exception("batched decode failed")
                self._fail(active, exc)
            self._outbox.flush()
            active = [s for s in active if not s.done]
        self._shutdown(active)
        self._outbox.flush()

    def _place(
        self, waiting: list[tuple[GenerationRequest, GenerationStats, LoopSink]]
    ) -> list[ActiveSequence]:
        placed: list[ActiveSequence] = []
        for item in waiting:
            request, stats, sink = item
            seq = self._start(request, stats, self._outbox.bind(sink))
            if isinstance(seq, ActiveSequence):
                placed.append(seq)
            elif seq is _PARK:
                self._park(item)
        return placed

    def _fail(self, active: list[ActiveSequence], exc: Exception) -> None:
        for seq in active:
            seq.put(exc)
            self._finish(seq, "")
            self._llama_cpp.llama_memory_seq_rm(self._mem, seq.slot.seq_id, -1, -1)
            seq.slot.tokens.clear()

    def _shutdown(self, active: list[ActiveSequence]) -> None:
        for seq in active:
            self._finish(seq, "cancelled")
        for slot in self.slots:  # pinned conversations survive the restart
            if slot.pin is not None:
                self._state.save(slot.pin, slot.seq_id, slot.tokens)
        with self._cond:
            for _request, stats, put in self._incoming:
                stats.finish_reason = "cancelled"
                put(_DONE)
            self._incoming = []

    def _park(self, item: tuple[GenerationRequest, GenerationStats, LoopSink]) -> None:
        request, stats, sink = item
        if request.cancel.is_set():
            stats.finish_reason = "cancelled"
            self._outbox.bind(sink)(_DONE)
            return
        with self._cond:
            self._incoming.append(item)

    def _step(self, active: list[ActiveSequence]) -> None:
        """One ``llama_decode`` for every active sequence, then one sample each."""
        for seq in active:
            if seq.request.cancel.is_set():
                self._finish(seq, "cancelled")
        outputs = self._steps.fill(active)
        if self._batch.n_tokens == 0:
            return
        rc = self._llama_cpp.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        for seq, index in outputs:
            self._emit(seq, index)

    def _emit(self, seq: ActiveSequence, index: int) -> None:
        params, stats = seq.request.params, seq.stats
        if seq.request.cancel.is_set():  # checked before every token
            self._finish(seq, "cancelled")
            return
        token = int(self._llama_cpp.llama_sampler_sample(seq.sampler, self._ctx, index))
        if token in params.stop_token_ids or self.is_eog(token):
            seq.put(GeneratedToken(token, ""))
            self._finish(seq, "stop")
            return
        stats.completion_tokens += 1
        piece = bytes(self.llm.detokenize([token]))
        seq.put(GeneratedToken(token, seq.decoder.decode(piece)))
        seq.last = token
        full = len(seq.slot.tokens) + 1 >= self.n_ctx
        if stats.completion_tokens >= params.max_tokens or full:
            self._finish(seq, "length")

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._queue.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        lc = self._llama_cpp
        if getattr(self, "_batch", None) is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        ctx, self._ctx = self._ctx, None
        if ctx:
            lc.llama_free(ctx)
        super().close()
