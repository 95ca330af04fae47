"""The remote chat engine against a real upstream: llama-cpp-python's ``llama_cpp.server`` with
the shipped SmolLM2 on 127.0.0.1, and an eGemma whose ``CHAT_UPSTREAM_URL`` points at it,
reached through the official OpenAI client."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from egemma.app import create_app
from tests.e2e.conftest import KEY, SMOL, real_settings
from tests.servers import LiveServer
from tests.upstream import Upstream

AUTH = {"Authorization": f"Bearer {KEY}"}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = Upstream(tmp_path_factory.mktemp("upstream") / "llama_cpp_server.log")
    up.start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def remote(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = real_settings(
        tmp_path_factory.mktemp("remote-data"),
        CHAT_UPSTREAM_URL=upstream.url,
        CHAT_UPSTREAM_PROBE_INTERVAL="0.5",
        CHAT_UPSTREAM_CONNECT_TIMEOUT="2",
        CHAT_EXTRA_MODELS="",
    )
    server = LiveServer(create_app(settings))
    server.start(timeout=120)
    yield server
    server.stop()


@pytest.fixture
def client(remote: LiveServer) -> OpenAI:
    return OpenAI(base_url=f"{remote.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def chat_health(remote: LiveServer) -> dict[str, Any]:
    entry: dict[str, Any] = httpx.get(f"{remote.base_url}/health").json()["chat_model"]
    return entry


def test_health_and_models_say_remote_and_reachable(remote: LiveServer) -> None:
    entry = chat_health(remote)
    assert entry["status"] == "loaded"
    assert entry["engine"] == "remote"
    assert entry["upstream"]["reachable"] is True
    assert isinstance(entry["upstream"]["checked_at"], int)
    models = httpx.get(f"{remote.base_url}/v1/models", headers=AUTH).json()["data"]
    smol = next(m for m in models if m["id"] == SMOL)
    assert smol["remote"] is True
    assert smol["upstream_reachable"] is True


def test_responses_turn_not_streamed(client: OpenAI) -> None:
    response = client.responses.create(
        model=SMOL,
        input="What is the capital of France? Answer in one word.",
        max_output_tokens=16,
        temperature=0,
    )
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.usage is not None
    assert response.usage.input_tokens > 5
    assert 0 < response.usage.output_tokens <= 20
    # Stored like any other response: the chain continues through the remote model.
    follow = client.responses.create(
        model=SMOL,
        input="And of Italy?",
        previous_response_id=response.id,
        max_output_tokens=8,
        temperature=0,
    )
    assert follow.output_text.strip()
    assert follow.usage is not None
    assert follow.usage.input_tokens > response.usage.input_tokens


def test_responses_turn_streamed(client: OpenAI) -> None:
    opened: list[str] = []
    closed: list[str] = []
    deltas: list[str] = []
    with client.responses.stream(
        model=SMOL, input="Write one sentence about the sea.", max_output_tokens=24
    ) as stream:
        for event in stream:
            if event.type.endswith(".added"):
                opened.append(event.type.removesuffix(".added"))
            elif event.type.endswith(".done") and not event.type.startswith("response.output_text"):
                closed.append(event.type.removesuffix(".done"))
            elif event.type == "response.output_text.delta":
                deltas.append(event.delta)
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
    assert sorted(opened) == sorted(closed)
    assert len(deltas) > 1
    assert final.output_text == "".join(deltas)
    assert final.status in ("completed", "incomplete")
    assert final.usage is not None
    assert final.usage.output_tokens >= len(deltas) - 2


def test_forced_tool_call_matches_schema(client: OpenAI) -> None:
    """The grammar built from the tool's parameters reaches the upstream: a 135M model does
    not produce an enum city and a bounded integer by itself."""
    for i in range(1):
        response = client.responses.create(
            model=SMOL,
            input=f"Plan {i}: what will the weather be like next week?",
            tools=[
                {
                    "type": "function",
                    "name": "get_weather",
                    "description": "Weather forecast for a city.",
                    "parameters": WEATHER,
                    "strict": True,
                }
            ],
            tool_choice="required",
            max_output_tokens=48,
            timeout=600,
        )
        calls = [item for item in response.output if item.type == "function_call"]
        assert len(calls) == 1, response.output
        assert calls[0].name == "get_weather"
        jsonschema.validate(json.loads(calls[0].arguments), WEATHER)


def test_special_token_in_user_text_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=SMOL, input="hi <|im_end|> there", max_output_tokens=4)
    assert info.value.status_code == 400
    assert info.value.code == "special_token_in_text"


def test_cancel_mid_stream_closes_the_upstream_stream(
    remote: LiveServer, upstream: Upstream
) -> None:
    before = upstream.log_text().count("Disconnected from client")
    body = {
        "model": SMOL,
        "input": "Write a very long story about a lighthouse keeper.",
        "max_output_tokens": 1000,
        "stream": True,
        "store": False,
    }
    deltas = 0
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{remote.base_url}/v1/responses", json=body, headers=AUTH) as resp,
    ):
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if '"response.output_text.delta"' in line:
                deltas += 1
                if deltas >= 3:
                    break
    assert deltas >= 3
    # llama_cpp.server notices the closed connection between two tokens and stops.
    wait_for(
        lambda: upstream.log_text().count("Disconnected from client") > before,
        "the upstream to see the disconnect",
    )
    busy = f'egemma_model_busy{{model="{SMOL}"}} 0.0'
    wait_for(
        lambda: busy in httpx.get(f"{remote.base_url}/metrics").text,
        "the model slot to be released",
    )


def test_upstream_down_then_back(remote: LiveServer, upstream: Upstream) -> None:
    """Down: 503 + Retry-After in OpenAI's error shape, /health and /v1/models say unreachable.
    Back: the next request is served again, without restarting eGemma."""
    body = {"model": SMOL, "input": "Hello", "max_output_tokens": 4, "store": False}
    upstream.stop()
    try:
        wait_for(
            lambda: chat_health(remote).get("upstream", {}).get("reachable") is False,
            "/health to say the upstream is unreachable",
        )
        entry = chat_health(remote)
        assert entry["status"] == "error"
        assert "upstream unreachable" in entry["reason"]
        resp = httpx.post(f"{remote.base_url}/v1/responses", json=body, headers=AUTH)
        assert resp.status_code == 503
        assert int(resp.headers["Retry-After"]) >= 1
        error = resp.json()["error"]
        assert error["type"] == "server_error"
        assert error["code"] == "upstream_unavailable"
        models = httpx.get(f"{remote.base_url}/v1/models", headers=AUTH).json()["data"]
        assert next(m for m in models if m["id"] == SMOL)["upstream_reachable"] is False
        assert httpx.get(f"{remote.base_url}/ready").status_code == 503
    finally:
        upstream.start()
    # A client that honours the 503 retries; the engine re-probes at most once a second, so a
    # probe that saw the upstream still starting may answer one more 503 before it recovers.
    deadline = time.monotonic() + 60
    while True:
        resp = httpx.post(f"{remote.base_url}/v1/responses", json=body, headers=AUTH, timeout=600)
        if resp.status_code != 503 or time.monotonic() > deadline:
            break
        assert resp.json()["error"]["code"] == "upstream_unavailable"
        time.sleep(1.5)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] in ("completed", "incomplete")
    wait_for(lambda: chat_health(remote)["status"] == "loaded", "/health to recover")
    assert httpx.get(f"{remote.base_url}/ready").status_code == 200


def test_no_upstream_at_start_is_reported_not_fatal(tmp_path: Path) -> None:
    settings = real_settings(
        tmp_path,
        CHAT_UPSTREAM_URL="http://127.0.0.1:9",  # discard port: nothing listens
        CHAT_UPSTREAM_CONNECT_TIMEOUT="1",
        CHAT_EXTRA_MODELS="",
    )
    server = LiveServer(create_app(settings))
    server.start(timeout=120)
    try:
        entry = chat_health(server)
        assert entry["engine"] == "remote"
        assert entry["status"] == "error"
        assert entry["upstream"]["reachable"] is False
        body = {"model": SMOL, "input": "Hello", "max_output_tokens": 4}
        resp = httpx.post(f"{server.base_url}/v1/responses", json=body, headers=AUTH)
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "upstream_unavailable"
    finally:
        server.stop()
