"""Models loaded on demand within a memory budget, through the real server and shipped GGUFs.

Estimates at CHAT_N_CTX=2048: SmolLM2 ≈ 238 MiB, Gemma 3 270M ≈ 788 MiB; a 900 MiB budget fits
either alone, never both, so serving both means swapping. A request for a model that must evict
one in use waits (up to MODEL_LOAD_TIMEOUT) and then gets 503 + Retry-After.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from egemma.app import create_app
from tests.e2e.conftest import GEMMA, KEY, SMOL, real_settings
from tests.servers import LiveServer

AUTH = {"Authorization": f"Bearer {KEY}"}
SUMMARY = "gemma-3-270m-q4_k_m"  # SUMMARY_MODEL_PATH's file stem
COMMON = {
    "CHAT_PRELOAD": "none",
    "MODEL_MEMORY_BUDGET": "900MiB",
    "SUMMARIZE_RATE_LIMIT_CALLS": "100000",
}


def _server(tmp: Path, **env: str) -> Iterator[LiveServer]:
    server = LiveServer(create_app(real_settings(tmp, **{**COMMON, **env})))
    server.start(timeout=300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def swap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The original's two-model setup: one chat GGUF, a different summary GGUF."""
    yield from _server(
        tmp_path_factory.mktemp("swap"),
        CHAT_EXTRA_MODELS="",
        SUMMARY_MODEL_PATH="builtin:gemma-3-270m",
        SUMMARY_N_CTX="2048",
    )


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Short idle TTL and load wait; the summary model needs more than the whole budget."""
    yield from _server(
        tmp_path_factory.mktemp("tight"),
        SUMMARY_MODEL_PATH="builtin:gemma-3-270m",
        SUMMARY_N_CTX="32768",
        MODEL_IDLE_TTL="1.5",
        MODEL_LOAD_TIMEOUT="1",
    )


def states(server: LiveServer) -> dict[str, dict[str, Any]]:
    body = httpx.get(f"{server.base_url}/health", timeout=10).json()
    return {m["id"]: m for m in body["models"]["models"]}


def metric(server: LiveServer, name: str) -> float:
    for line in httpx.get(f"{server.base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def respond(server: LiveServer, model: str, tokens: int = 4, **extra: Any) -> httpx.Response:
    body = {"model": model, "input": "Say hi.", "max_output_tokens": tokens, **extra}
    return httpx.post(f"{server.base_url}/v1/responses", json=body, headers=AUTH, timeout=180)


def summarize(server: LiveServer, text: str) -> httpx.Response:
    files = {"file": ("note.txt", text.encode())}
    data = {"max_tokens": "8", "temperature": "0"}
    return httpx.post(
        f"{server.base_url}/summarize", files=files, data=data, headers=AUTH, timeout=180
    )


def admin(server: LiveServer, model: str, action: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/models/{model}/{action}", headers=AUTH, timeout=180)


def test_first_request_loads_and_models_lists_state(swap: LiveServer) -> None:
    listing = httpx.get(f"{swap.base_url}/v1/models", headers=AUTH, timeout=10).json()
    entries = {m["id"]: m for m in listing["data"]}
    assert entries[SMOL]["object"] == "model"
    assert entries[SMOL]["owned_by"] == "egemma"
    assert entries[SMOL]["state"] == "configured"
    assert entries[SMOL]["loaded"] is False
    assert entries[SMOL]["available"] is True
    assert entries[SMOL]["memory"]["estimated_bytes"] > 90_000_000
    assert listing["memory_budget_bytes"] == 900 * 1024**2
    loads = metric(swap, "egemma_model_loads_total")

    r = respond(swap, SMOL)
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("completed", "incomplete")
    model = states(swap)[SMOL]
    assert model["state"] == "loaded"
    assert model["memory"]["measured_bytes"] > 0
    assert metric(swap, "egemma_model_loads_total") == loads + 1
    assert metric(swap, "egemma_model_load_seconds_total") > 0


def test_the_two_models_swap_within_the_budget(swap: LiveServer) -> None:
    assert respond(swap, SMOL).status_code == 200
    evictions = metric(swap, "egemma_model_evictions_total")

    r = summarize(swap, "The cache keeps recent answers so repeated questions are fast.")
    assert r.status_code == 200, r.text
    now = states(swap)
    assert now[SUMMARY]["state"] == "loaded"
    assert now[SMOL]["state"] == "configured"
    assert metric(swap, "egemma_model_evictions_total") == evictions + 1

    assert respond(swap, SMOL).status_code == 200
    now = states(swap)
    assert now[SMOL]["state"] == "loaded"
    assert now[SUMMARY]["state"] == "configured"
    assert metric(swap, "egemma_model_evictions_total") == evictions + 2


def test_a_model_in_use_is_not_evicted_the_other_waits(swap: LiveServer) -> None:
    assert respond(swap, SMOL).status_code == 200  # loaded
    body = {"model": SMOL, "input": "Write a long story.", "max_output_tokens": 80}
    result: dict[str, Any] = {}
    sent = threading.Event()

    def ask_summary() -> None:
        sent.set()
        try:
            result["response"] = summarize(swap, "A scheduler hands each request a model slot.")
        except httpx.HTTPError as exc:  # reported by the assertion below
            result["error"] = repr(exc)
        result["done"] = time.monotonic()

    seen_mid_stream: dict[str, Any] = {}
    with httpx.stream(
        "POST",
        f"{swap.base_url}/v1/responses",
        json={**body, "stream": True},
        headers=AUTH,
        timeout=180,
    ) as stream:
        worker = threading.Thread(target=ask_summary)
        events = 0
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events += 1
                last = line
            if events == 5 and not sent.is_set():
                worker.start()
                sent.wait()
                time.sleep(0.5)
                seen_mid_stream = states(swap)
        stream_end = time.monotonic()
    worker.join(timeout=180)
    assert last == "event: response.completed" or last == "event: response.incomplete"
    # While the stream ran, the chat model stayed loaded and the summary model waited.
    assert seen_mid_stream[SMOL]["state"] == "loaded"
    assert seen_mid_stream[SMOL]["in_use"] >= 1
    assert seen_mid_stream[SUMMARY]["state"] == "configured"
    assert "response" in result, result.get("error", "the summary request did not finish")
    assert result["response"].status_code == 200, result["response"].text
    assert result["done"] >= stream_end - 0.5


def test_concurrent_first_requests_load_once(swap: LiveServer) -> None:
    assert admin(swap, SMOL, "unload").status_code == 200
    assert admin(swap, SUMMARY, "unload").status_code == 200
    assert states(swap)[SMOL]["state"] == "configured"
    loads = metric(swap, "egemma_model_loads_total")
    replies: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: replies.append(respond(swap, SMOL))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert metric(swap, "egemma_model_loads_total") == loads + 1


def test_admin_routes_need_an_admin_key_and_name_models(swap: LiveServer) -> None:
    r = httpx.post(f"{swap.base_url}/v1/models/{SMOL}/load", timeout=10)
    assert r.status_code == 401
    r = admin(swap, "no-such-model", "load")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    r = admin(swap, SMOL, "load")
    assert r.status_code == 200
    assert r.json()["state"] == "loaded"


def test_too_large_for_the_budget_is_refused_clearly(tight: LiveServer) -> None:
    r = summarize(tight, "Anything at all.")
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "model_exceeds_memory_budget"
    assert "MODEL_MEMORY_BUDGET" in error["message"]
    assert SUMMARY in error["message"]
    assert "Retry-After" in r.headers
    listing = httpx.get(f"{tight.base_url}/v1/models", headers=AUTH, timeout=10).json()
    assert {m["id"]: m for m in listing["data"]}[SUMMARY]["available"] is False
    assert respond(tight, SMOL).status_code == 200  # the server serves the others


def test_idle_ttl_unloads(tight: LiveServer) -> None:
    unloads = metric(tight, "egemma_model_unloads_total")
    assert respond(tight, GEMMA).status_code == 200
    assert states(tight)[GEMMA]["state"] == "loaded"
    deadline = time.monotonic() + 60
    while states(tight)[GEMMA]["state"] in ("loaded", "unloading") and time.monotonic() < deadline:
        time.sleep(0.25)
    assert states(tight)[GEMMA]["state"] == "configured"
    assert metric(tight, "egemma_model_unloads_total") >= unloads + 1


def test_in_use_model_blocks_a_load_past_the_timeout_with_503(tight: LiveServer) -> None:
    assert respond(tight, SMOL).status_code == 200
    body = {"model": SMOL, "input": "Write a long story.", "max_output_tokens": 200, "stream": True}
    refused: httpx.Response | None = None
    with httpx.stream(
        "POST", f"{tight.base_url}/v1/responses", json=body, headers=AUTH, timeout=180
    ) as stream:
        for line in stream.iter_lines():
            if refused is None and line.startswith("event: response.output_text.delta"):
                refused = respond(tight, GEMMA)  # needs SmolLM2's room; it is streaming
            if line.startswith("event: "):
                last = line
    assert last in ("event: response.completed", "event: response.incomplete")
    assert refused is not None
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "model_loading"
    assert int(refused.headers["Retry-After"]) >= 1
