"""A remote chat engine: generation on an OpenAI-compatible model server, everything else here.

eGemma keeps what the model server lacks (the store, Conversations, background mode, auth,
limits) and what makes its answers trustworthy: its own prompt rendering (the GGUF's chat
template in the sandbox), its tool-call parsing and its grammars. The upstream only samples:
the rendered prompt goes to ``POST /v1/completions`` as text with the GBNF ``grammar`` built
here (llama.cpp's ``llama-server`` and llama-cpp-python's ``llama_cpp.server`` both accept it),
and its SSE chunks come back as text pieces.

The tokenizer and chat template come from the model's own GGUF read locally with
``vocab_only`` (no weights loaded, ``CHAT_UPSTREAM_TOKENIZER``): tokenizing every prompt over
HTTP would add a round trip per segment, and ``llama_cpp.server``'s ``/extras/tokenize`` always
parses special tokens, so it could not tell user text from control tokens. The same local
vocabulary counts prompt tokens for the context check (``CHAT_N_CTX``, which must not exceed
the upstream's context) and re-counts the completion's tokens for ``usage``.

Because the prompt travels as text, the upstream re-tokenizes it with special tokens parsed:
user text that spells a control token (``<|im_end|>``) would become that token there. Such
text is refused with 400 ``special_token_in_text`` instead of being silently reinterpreted.

A daemon thread probes ``GET CHAT_UPSTREAM_PROBE_PATH`` (``/health``) every
``CHAT_UPSTREAM_PROBE_INTERVAL`` seconds; any answer below 500 means a server is there (llama-server
answers 503 while it loads its model; ``llama_cpp.server`` has no ``/health`` and answers 404,
which is fine: its ``/v1/models`` takes the model lock, and with its default
``interrupt_requests`` a probe there would cut the running generation short);
``/health`` and ``/v1/models`` read its last result (no request waits for it). ``admit``
refuses with 503 + ``Retry-After`` while the upstream is known to be down, re-probing on demand
at most once a second so a recovered upstream is used at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

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
from egemma.engines.llamacpp import MAX_GBNF_BYTES, _property_order
from egemma.engines.queue import ModelQueue
from egemma.engines.threaded import LazyTokenStream
from egemma.errors import InvalidRequestError, UnavailableError, UpstreamError
from egemma.settings import ChatSettings, UpstreamSettings

log = logging.getLogger(__name__)

ON_DEMAND_PROBE_SECONDS = 1.0
GRAMMAR_CACHE_SIZE = 64

ProbeListener = Callable[[bool, str | None], None]


def _headers(settings: UpstreamSettings) -> dict[str, str]:
    if settings.api_key is None:
        return {}
    return {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"}


class UpstreamProbe:
    """The upstream's last known reachability, refreshed by a daemon thread and on demand."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._settings = settings
        self._url = settings.url.rstrip("/") + settings.probe_path
        self.state: dict[str, Any] = {"reachable": None, "checked_at": None, "reason": None}
        self.listener: ProbeListener | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._checked = 0.0

    @property
    def reachable(self) -> bool | None:
        value: bool | None = self.state["reachable"]
        return value

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._loop, name="upstream-probe", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._settings.probe_interval):
            self.check()

    def check(self) -> bool:
        """Probe now (blocking). Concurrent callers share one probe's result."""
        if not self._lock.acquire(blocking=False):
            with self._lock:
                return bool(self.state["reachable"])
        try:
            timeout = httpx.Timeout(self._settings.connect_timeout)
            try:
                reply = httpx.get(self._url, headers=_headers(self._settings), timeout=timeout)
                reason = None if reply.status_code < 500 else f"HTTP {reply.status_code}"
            except httpx.ReadTimeout:
                # It accepted the connection but is slow to answer (a loaded machine): up. A
                # hung generation is caught by CHAT_UPSTREAM_TIMEOUT, not here.
                self.record(True, "slow to answer the probe")
                return True
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}"
            self.record(reason is None, reason)
            return reason is None
        finally:
            self._lock.release()

    def record(self, reachable: bool, reason: str | None) -> None:
        before = self.state["reachable"]
        self.state.update(reachable=reachable, checked_at=int(time.time()), reason=reason)
        self._checked = time.monotonic()
        if before != reachable:
            log.log(
                logging.INFO if reachable else logging.WARNING,
                "upstream %s %s%s",
                self._settings.url,
                "reachable" if reachable else "unreachable",
                f": {reason}" if reason else "",
            )
            if self.listener is not None:
                self.listener(reachable, reason)

    def stale(self) -> bool:
        return time.monotonic() - self._checked >= ON_DEMAND_PROBE_SECONDS

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._settings.connect_timeout + 1)


class RemoteChatEngine:
    """A ``ChatEngine`` whose generations run on an OpenAI-compatible upstream."""

    remote = True

    def __init__(
        self,
        name: str,
        tokenizer_path: Path,
        vocab: Any,
        chat: ChatSettings,
        upstream: UpstreamSettings,
    ) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.name = name
        self.identity = f"remote:{upstream.url.rstrip('/')}#{upstream.model or name}"
        self.tokenizer_path = tokenizer_path
        self.upstream_model = upstream.model or name
        self._vocab = vocab
        self._settings = upstream
        self.metadata: dict[str, str] = dict(vocab.metadata or {})
        self.architecture = self.metadata.get("general.architecture", "")
        self.chat_template: str | None = self.metadata.get("tokenizer.chat_template")
        self.n_ctx = chat.n_ctx
        bos, eos = vocab.token_bos(), vocab.token_eos()
        self.special = SpecialTokens(
            bos_id=bos,
            eos_id=eos,
            bos_text=self._piece(bos, special=True),
            eos_text=self._piece(eos, special=True),
            add_bos=self.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false",
        )
        self._queue = ModelQueue(chat.queue_size, chat.queue_timeout, upstream.concurrency)
        self.probe = UpstreamProbe(upstream)
        self._grammars: dict[str, str] = {}
        self._control: dict[int, bool] = {}

    @classmethod
    def load(
        cls, name: str, tokenizer_path: Path, chat: ChatSettings, upstream: UpstreamSettings
    ) -> RemoteChatEngine:
        from llama_cpp import Llama

        vocab = Llama(model_path=str(tokenizer_path), vocab_only=True, verbose=False)
        engine = cls(name, tokenizer_path, vocab, chat, upstream)
        engine.probe.start()
        return engine

    # -- tokenizer (local vocabulary) -----------------------------------------------------------

    def _piece(self, token: int, *, special: bool) -> str:
        if token < 0:
            return ""
        raw = bytes(self._vocab.detokenize([token], special=special))
        return raw.decode("utf-8", "replace")

    def _is_control(self, token: int) -> bool:
        found = self._control.get(token)
        if found is None:
            found = (
                self._piece(token, special=False) == "" and self._piece(token, special=True) != ""
            )
            self._control[token] = found
        return found

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        data = text.encode("utf-8", "surrogatepass")
        tokens: list[int] = self._vocab.tokenize(data, add_bos=False, special=special)
        if not special:
            # The upstream parses special tokens in the text it is sent: refuse text that
            # would turn into a control token there (see the module docstring).
            spelled = self._vocab.tokenize(data, add_bos=False, special=True)
            controls = [t for t in spelled if self._is_control(t)]
            if controls:
                raise InvalidRequestError(
                    "The input spells the model's control token "
                    f"{self._piece(controls[0], special=True)!r}; the remote engine sends "
                    "prompts as text and cannot keep it literal.",
                    param="input",
                    code="special_token_in_text",
                )
        return tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        return bytes(self._vocab.detokenize(list(tokens))).decode("utf-8", "replace")

    def token_id(self, text: str) -> int | None:
        ids = self._vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None

    def prompt_text(self, prompt: Sequence[int]) -> str:
        """The text the upstream re-tokenizes into ``prompt`` (it adds the BOS itself)."""
        tokens = list(prompt)
        if tokens and self.special.add_bos and tokens[0] == self.special.bos_id:
            tokens = tokens[1:]
        return bytes(self._vocab.detokenize(tokens, special=True)).decode("utf-8", "replace")

    # -- grammar ----------------------------------------------------------------------------------

    def gbnf_for(self, json_schema: str) -> str:
        found = self._grammars.get(json_schema)
        if found is None:
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            order = _property_order(json.loads(json_schema))
            found = json_schema_to_gbnf(json_schema, prop_order=order)
            if len(self._grammars) > GRAMMAR_CACHE_SIZE:
                self._grammars.clear()
            self._grammars[json_schema] = found
        return found

    def check_grammar(self, json_schema: str) -> None:
        """Build the GBNF here and parse it against the local vocabulary, as the upstream's
        llama.cpp will: a schema it cannot constrain is a 400 before any upstream call."""
        llama_cpp = self._llama_cpp
        try:
            gbnf = self.gbnf_for(json_schema)
        except Exception as exc:  # the converter raises anything from KeyError to RecursionError
            raise GrammarError(
                f"llama.cpp cannot build a grammar from this schema: {exc}"
            ) from None
        if len(gbnf) > MAX_GBNF_BYTES:
            self._grammars.pop(json_schema, None)
            raise GrammarError(f"The schema's grammar exceeds {MAX_GBNF_BYTES} bytes.")
        sampler = llama_cpp.llama_sampler_init_grammar(
            self._vocab._model.vocab, gbnf.encode("utf-8"), b"root"
        )
        if not sampler:
            self._grammars.pop(json_schema, None)
            raise GrammarError("llama.cpp could not parse the grammar built from this schema.")
        llama_cpp.llama_sampler_free(sampler)

    # -- admission --------------------------------------------------------------------------------

    async def admit(self, is_disconnected: Disconnected | None = None) -> Slot:
        if self.probe.reachable is not True and self.probe.stale():
            await anyio.to_thread.run_sync(self.probe.check)
        if self.probe.reachable is not True:
            retry = max(1, round(min(self._settings.probe_interval, 30.0)))
            raise UnavailableError(
                f"Model '{self.name}' is served by an upstream that is unreachable. Retry later.",
                retry_after=retry,
                code="upstream_unavailable",
            )
        return await self._queue.admit(is_disconnected)

    def admission_stats(self) -> AdmissionStats:
        return self._queue.stats()

    def close_admission(self) -> None:
        self._queue.close()

    # -- generation -------------------------------------------------------------------------------

    def client(self) -> httpx.AsyncClient:
        """A client per generation: no pool outlives the event loop that made it."""
        s = self._settings
        return httpx.AsyncClient(
            base_url=s.url.rstrip("/"),
            headers=_headers(s),
            timeout=httpx.Timeout(s.timeout, connect=s.connect_timeout),
        )

    def request_body(self, request: GenerationRequest) -> dict[str, Any]:
        """The upstream ``/v1/completions`` body for one generation."""
        params = request.params
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "prompt": self.prompt_text(request.prompt),
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "min_p": params.min_p,
            "top_k": params.top_k,
            "repeat_penalty": 1.0,
            "stream": True,
        }
        stops = [self._piece(t, special=True) for t in params.stop_token_ids]
        if stops := [s for s in stops if s]:
            body["stop"] = stops
        if params.gbnf is not None:
            body["grammar"] = params.gbnf
        elif params.json_schema is not None:
            body["grammar"] = self.gbnf_for(params.json_schema)
        return body

    def generate(self, request: GenerationRequest) -> TokenStream:
        return RemoteTokenStream(self, request)

    def close(self) -> None:
        self._queue.close()
        self.probe.stop()
        vocab, self._vocab = self._vocab, None
        close = getattr(vocab, "close", None)
        if callable(close):
            close()


class RemoteTokenStream(LazyTokenStream):
    """One upstream generation read from its SSE stream; closing it closes the connection,
    which makes the upstream stop generating (both llama.cpp servers check between tokens)."""

    def __init__(self, engine: RemoteChatEngine, request: GenerationRequest) -> None:
        super().__init__(request, GenerationStats(prompt_tokens=len(request.prompt)))
        self._engine = engine

    async def _run(self) -> AsyncIterator[GeneratedToken]:
        engine, cancel, stats = self._engine, self._request.cancel, self.stats
        stats.finish_reason = "length"
        if cancel.is_set():
            stats.finish_reason = "cancelled"
            return
        body = await anyio.to_thread.run_sync(engine.request_body, self._request)
        parts: list[str] = []
        try:
            async with (
                engine.client() as client,
                client.stream("POST", "/v1/completions", json=body) as reply,
            ):
                if reply.status_code != 200:
                    detail = (await reply.aread())[:300].decode("utf-8", "replace")
                    log.warning("upstream answered %s: %s", reply.status_code, detail)
                    raise UpstreamError(f"The model server answered HTTP {reply.status_code}.")
                async for piece in self._pieces(reply):
                    parts.append(piece)
                    yield GeneratedToken(-1, piece)
        except httpx.TimeoutException:
            raise UpstreamError("The model server timed out.") from None
        except httpx.TransportError as exc:
            engine.probe.record(False, type(exc).__name__)
            raise UnavailableError(
                "The model server is unreachable.", retry_after=5, code="upstream_unavailable"
            ) from None
        finally:
            if parts:
                text = "".join(parts)
                stats.completion_tokens = len(engine.tokenize(text, special=True))

    async def _pieces(self, reply: httpx.Response) -> AsyncIterator[str]:
        """Text pieces from ``data:`` lines until ``[DONE]``, a finish reason or a cancel."""
        cancel, stats = self._request.cancel, self.stats
        saw_reason = False
        async for line in reply.aiter_lines():
            if cancel.is_set():
                stats.finish_reason = "cancelled"
                return
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                if not saw_reason:
                    # llama_cpp.server ends an interrupted generation like this (its
                    # interrupt_requests): a cut answer, not a finished one.
                    raise UpstreamError("The model server ended the answer without a reason.")
                return
            choice = (json.loads(data).get("choices") or [{}])[0]
            text = choice.get("text") or ""
            if text:
                yield text
            reason = choice.get("finish_reason")
            if reason:
                saw_reason = True
                stats.finish_reason = "length" if reason == "length" else "stop"
