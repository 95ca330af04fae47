"""Streams while their model loads, per-request ``keep_alive``, through the real server, the
shipped GGUFs and the official openai client.

The 900 MiB budget fits SmolLM2 (≈ 238 MiB) or Gemma 3 270M (≈ 788 MiB), never both: a stream
for SmolLM2 while Gemma streams must wait for Gemma's stream to end before SmolLM2 can load, a
wait long enough to see. ``STREAM_KEEPALIVE_INTERVAL`` is 0.05 s so keep-alives show in it.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from egemma.app import create_app
from egemma.modelfiles import resolve
from tests.e2e.conftest import GEMMA, KEY, SMOL, real_settings
from tests.servers import LiveServer

AUTH = {"Authorization": f"Bearer {KEY}"}
KEEPALIVE = b": keep-alive"
BROKEN = "broken-copy"


@pytest.fixture(scope="module")
def lazy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("lazy")
    smol = resolve(f"builtin:{SMOL}", "CHAT_MODEL_PATH", tmp / "models").path
    copy = tmp / "copy.gguf"
    shutil.copyfile(smol, copy)
    settings = real_settings(
        tmp,
        CHAT_PRELOAD="none",
        MODEL_MEMORY_BUDGET="900MiB",
        MODEL_LOAD_TIMEOUT="600",  # the wait behind Gemma's stream, on a busy 2-core machine
        MODEL_IDLE_TTL="3",
        STREAM_KEEPALIVE_INTERVAL="0.05",
        CHAT_EXTRA_MODELS=f"{GEMMA}=builtin:{GEMMA},{BROKEN}={copy}",
        SUMMARIZE_RATE_LIMIT_CALLS="100000",
    )
    server = LiveServer(create_app(settings))
    server.start(timeout=300)
    # Registered (its vocabulary read) at startup; its weights are gone before the first load.
    copy.unlink()
    yield server
    server.stop()


def states(server: LiveServer) -> dict[str, dict[str, Any]]:
    body = httpx.get(f"{server.base_url}/health", timeout=10).json()
    return {m["id"]: m for m in body["models"]["models"]}


def admin(server: LiveServer, model: str, action: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/models/{model}/{action}", headers=AUTH, timeout=180)


def respond(server: LiveServer, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "input": "Say hi.", "max_output_tokens": 4, **extra}
    return httpx.post(f"{server.base_url}/v1/responses", json=body, headers=AUTH, timeout=180)


class GemmaStreams:
    """Keeps Gemma loaded and in use (a long stream in a thread) while a test asks for
    SmolLM2, which then cannot load until the stream ends."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.started = threading.Event()
        self.ended_at = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {
            "model": GEMMA,
            "input": "Count from one to two hundred in words, one number per line.",
            "max_output_tokens": 24,
            "temperature": 0,
            "stream": True,
        }
        url = f"{self.server.base_url}/v1/responses"
        with httpx.stream("POST", url, json=body, headers=AUTH, timeout=180) as stream:
            for line in stream.iter_lines():
                if line.startswith("event: response.output_text.delta"):
                    self.started.set()
        self.ended_at = time.monotonic()
        self.started.set()

    def __enter__(self) -> GemmaStreams:
        assert admin(self.server, SMOL, "unload").status_code == 200
        self.thread.start()
        assert self.started.wait(180)
        assert states(self.server)[GEMMA]["state"] == "loaded"
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(180)


class Tee(httpx.HTTPTransport):
    """Records the raw bytes of every response the openai client reads."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        inner, raw = response.stream, self.raw

        class Recorded(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for chunk in inner:  # type: ignore[union-attr]
                    raw.append(chunk)
                    yield chunk

            def close(self) -> None:
                inner.close()  # type: ignore[union-attr]

        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=Recorded(),
            extensions=response.extensions,
        )


def client(server: LiveServer, tee: Tee) -> OpenAI:
    return OpenAI(
        base_url=f"{server.base_url}/v1",
        api_key=KEY,
        max_retries=0,
        timeout=180,
        http_client=httpx.Client(transport=tee),
    )


def test_stream_opens_at_once_and_keeps_alive_while_its_model_waits_to_load(
    lazy: LiveServer,
) -> None:
    body = {"model": SMOL, "input": "Say hi.", "max_output_tokens": 8, "stream": True}
    seen: list[tuple[float, str]] = []
    with GemmaStreams(lazy) as gemma:
        url = f"{lazy.base_url}/v1/responses"
        with httpx.stream("POST", url, json=body, headers=AUTH, timeout=180) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                if line.startswith(("event: ", ":")):
                    seen.append((time.monotonic(), line))
                if line == "event: response.created":
                    created_state = states(lazy)[SMOL]["state"]
    kinds = [line for _, line in seen]
    assert kinds[0] == "event: response.created"
    assert kinds[1] == "event: response.in_progress"
    created_at = seen[0][0]
    # The stream opened while Gemma's stream still held the budget, before SmolLM2 loaded.
    assert created_at < gemma.ended_at
    assert created_state != "loaded"
    first_item = kinds.index("event: response.output_item.added")
    waiting = kinds[2:first_item]
    assert waiting.count(": keep-alive") >= 3
    # Each keep-alive comment is followed by a repeated in_progress (Codex's idle timer).
    assert set(waiting) == {": keep-alive", "event: response.in_progress"}
    assert seen[first_item][0] > gemma.ended_at  # output only once SmolLM2 could load
    assert kinds[-1] in ("event: response.completed", "event: response.incomplete")
    assert states(lazy)[SMOL]["state"] == "loaded"


def test_openai_sdk_streams_ignore_the_keep_alives(lazy: LiveServer) -> None:
    tee = Tee()
    oai = client(lazy, tee)
    with GemmaStreams(lazy):
        events = list(
            oai.responses.create(
                model=SMOL, input="Say hi.", max_output_tokens=8, stream=True, temperature=0
            )
        )
    raw = b"".join(tee.raw)
    assert raw.count(KEEPALIVE) >= 3  # they were on the wire
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in ("response.completed", "response.incomplete")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text.strip()
    assert [e.sequence_number for e in events] == list(range(len(events)))

    tee.raw.clear()
    with GemmaStreams(lazy):
        chunks = list(
            oai.chat.completions.create(
                model=SMOL,
                messages=[{"role": "user", "content": "Say hi."}],
                max_tokens=8,
                stream=True,
            )
        )
    assert b"".join(tee.raw).count(KEEPALIVE) >= 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_load_that_fails_mid_stream_ends_with_response_failed(lazy: LiveServer) -> None:
    body = {"model": BROKEN, "input": "Say hi.", "max_output_tokens": 8, "stream": True}
    url = f"{lazy.base_url}/v1/responses"
    frames: list[dict[str, Any]] = []
    with httpx.stream("POST", url, json=body, headers=AUTH, timeout=180) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
    types = [f["type"] for f in frames]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.failed"
    failed = frames[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "model_load_failed"
    assert BROKEN in failed["error"]["message"]
    assert failed["id"] == frames[0]["response"]["id"]
    assert states(lazy)[BROKEN]["state"] == "error"

    # The official clients: the Responses stream ends on the typed event, chat raises.
    oai = client(lazy, Tee())
    events = list(oai.responses.create(model=BROKEN, input="Hi.", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "model_load_failed"  # type: ignore[union-attr]
    with pytest.raises(openai.APIError, match="failed to load"):
        list(
            oai.chat.completions.create(
                model=BROKEN, messages=[{"role": "user", "content": "Hi."}], stream=True
            )
        )
    assert respond(lazy, SMOL).status_code == 200  # the server serves on


def test_keep_alive_zero_unloads_after_the_request(lazy: LiveServer) -> None:
    r = respond(lazy, SMOL, keep_alive=0)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while states(lazy)[SMOL]["state"] != "configured" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert states(lazy)[SMOL]["state"] == "configured"

    files = {"file": ("note.txt", b"The cache keeps recent answers so repeats are fast.")}
    data = {"max_tokens": "8", "keep_alive": "0s"}  # the summary model is the chat model here
    r = httpx.post(f"{lazy.base_url}/summarize", files=files, data=data, headers=AUTH, timeout=180)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while states(lazy)[SMOL]["state"] != "configured" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert states(lazy)[SMOL]["state"] == "configured"


def test_keep_alive_forever_outlives_the_idle_ttl(lazy: LiveServer) -> None:
    oai = OpenAI(base_url=f"{lazy.base_url}/v1", api_key=KEY, max_retries=0, timeout=180)
    oai.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=4,
        extra_body={"keep_alive": -1},
    )
    time.sleep(4.5)  # MODEL_IDLE_TTL is 3 s
    model = states(lazy)[SMOL]
    assert model["state"] == "loaded"
    assert model["keep_alive"] == -1
    listing = httpx.get(f"{lazy.base_url}/v1/models", headers=AUTH, timeout=10).json()
    assert {m["id"]: m for m in listing["data"]}[SMOL]["keep_alive"] == -1
    # A later request's keep_alive replaces it.
    assert respond(lazy, SMOL, keep_alive="1s").status_code == 200
    deadline = time.monotonic() + 10
    while states(lazy)[SMOL]["state"] in ("loaded", "unloading") and time.monotonic() < deadline:
        time.sleep(0.1)  # the batched engine takes a moment to stop its scheduler
    assert states(lazy)[SMOL]["state"] == "configured"


@pytest.mark.parametrize("value", ["soon", True, "5d", "nan", [1], "1h-5m", 40 * 86_400])
def test_bad_keep_alive_is_an_openai_400(lazy: LiveServer, value: Any) -> None:
    r = respond(lazy, SMOL, keep_alive=value, stream=True)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "keep_alive"
    assert error["code"] == "invalid_keep_alive"
    assert error["type"] == "invalid_request_error"
    r = httpx.post(
        f"{lazy.base_url}/v1/chat/completions",
        json={"model": SMOL, "messages": [{"role": "user", "content": "x"}], "keep_alive": value},
        headers=AUTH,
        timeout=30,
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "keep_alive"
    if isinstance(value, str):
        r = httpx.post(
            f"{lazy.base_url}/summarize",
            files={"file": ("a.txt", b"text")},
            data={"keep_alive": value},
            headers=AUTH,
            timeout=30,
        )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_keep_alive"
