"""The cross-encoder under the model registry, through the real server: the tiny random-weight
reranker (``tests/e2e/tiny_reranker.py``, ≈ 5 MB exported) beside SmolLM2 (≈ 238 MiB at 2048
tokens).

``roomy`` preloads both (CHAT_PRELOAD's default names ``rerank``) with a 3 s MODEL_IDLE_TTL;
``tight`` loads nothing at startup and has a budget one byte short of both models' estimates
(read from ``roomy``), so each evicts the other when idle and waits while the other is in use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from egemma.app import create_app
from egemma.services.models.rerank import ManagedRerankEngine
from egemma.settings import ModelSettings
from tests.e2e import tiny_reranker
from tests.e2e.conftest import KEY, SMOL, real_settings
from tests.e2e.test_embedding_registry import chat, metric, states, wait_state, wait_waiting
from tests.servers import LiveServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

AUTH = {"Authorization": f"Bearer {KEY}"}
RERANKER = "tiny-cross-encoder"
QUERY = "how do I reset my password?"
DOCS = ["Open Settings, choose Account, then Reset password.", "Tokyo is in Japan.", "OK"]


@pytest.fixture(scope="module")
def exported() -> Path:
    return tiny_reranker.onnx_folder(tiny_reranker.source_folder())


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _start(tmp: Path, model: Path, **env: str) -> LiveServer:
    settings = real_settings(
        tmp,
        RERANK_MODEL_PATH=str(model),
        CHAT_EXTRA_MODELS="",
        EMBED_RATE_LIMIT_CALLS="100000",
        **env,
    )
    server = LiveServer(create_app(settings))
    server.start(timeout=300)
    return server


def _server(tmp: Path, model: Path, **env: str) -> Iterator[LiveServer]:
    server = _start(tmp, model, **env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory, exported: Path) -> Iterator[LiveServer]:
    yield from _server(tmp_path_factory.mktemp("roomy"), exported, MODEL_IDLE_TTL="3")


@pytest.fixture(scope="module")
def tight(
    tmp_path_factory: pytest.TempPathFactory, exported: Path, roomy: LiveServer
) -> Iterator[LiveServer]:
    listed = states(roomy)
    both = sum(listed[m]["memory"]["estimated_bytes"] for m in (SMOL, RERANKER))
    yield from _server(
        tmp_path_factory.mktemp("tight"),
        exported,
        CHAT_PRELOAD="none",
        MODEL_MEMORY_BUDGET=str(both - 1),
        MODEL_LOAD_TIMEOUT="120",
    )


def rerank(server: LiveServer, **extra: Any) -> httpx.Response:
    body = {"query": QUERY, "documents": DOCS, **extra}
    return httpx.post(f"{server.base_url}/v1/rerank", json=body, headers=AUTH, timeout=180)


def test_the_default_preload_loads_the_reranker_and_lists_it(
    roomy: LiveServer, exported: Path
) -> None:
    assert "rerank" in ModelSettings(_env_file=None).preload()  # type: ignore[call-arg]
    listing = httpx.get(f"{roomy.base_url}/v1/models", headers=AUTH, timeout=10).json()
    models = {m["id"]: m for m in listing["data"]}
    entry = models[RERANKER]
    assert entry["capabilities"] == ["rerank"]
    assert entry["state"] == "loaded"  # preloaded at startup, within the 3 s idle TTL
    assert entry["memory"]["estimated_bytes"] == folder_size(exported)
    assert entry["available"] is True
    # Counted in the budget beside the chat model.
    smol = models[SMOL]["memory"]["estimated_bytes"]
    assert listing["memory_used_bytes"] >= folder_size(exported) + smol
    health = httpx.get(f"{roomy.base_url}/health", timeout=10).json()
    assert health["rerank_model"]["status"] == "loaded"
    assert health["rerank_model"]["scorer"] == "cross_encoder"
    assert states(roomy)[RERANKER]["kind"] == "rerank"
    engine = roomy.app.state.egemma.engines.reranker
    assert isinstance(engine, ManagedRerankEngine)
    assert engine.entry.engine is not None
    # The facts-file identity and length are the loaded session's.
    assert engine.identity == engine.entry.engine.identity
    assert engine.max_length == engine.entry.engine.max_length == 128


def test_idle_ttl_unloads_it_and_the_next_request_loads_it(roomy: LiveServer) -> None:
    before = rerank(roomy)
    assert before.status_code == 200, before.text
    unloads = metric(roomy, "egemma_model_unloads_total")
    assert wait_state(roomy, RERANKER, "configured") == "configured"
    assert metric(roomy, "egemma_model_unloads_total") >= unloads + 1
    assert roomy.app.state.egemma.engines.reranker.entry.engine is None  # the session is gone
    loads = metric(roomy, "egemma_model_loads_total")
    after = rerank(roomy)
    assert after.status_code == 200, after.text
    assert after.json()["scorer"] == "cross_encoder"
    assert after.json()["results"] == before.json()["results"]  # the same model, reloaded
    assert states(roomy)[RERANKER]["state"] == "loaded"
    assert metric(roomy, "egemma_model_loads_total") == loads + 1


def test_keep_alive_on_rerank(roomy: LiveServer) -> None:
    r = rerank(roomy, keep_alive=-1)
    assert r.status_code == 200, r.text
    assert states(roomy)[RERANKER]["keep_alive"] == -1
    time.sleep(4)  # past MODEL_IDLE_TTL
    assert states(roomy)[RERANKER]["state"] == "loaded"
    r = rerank(roomy, keep_alive="0")
    assert r.status_code == 200
    assert wait_state(roomy, RERANKER, "configured", seconds=10) == "configured"
    bad = rerank(roomy, keep_alive="whenever")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "keep_alive"
    assert bad.json()["error"]["code"] == "invalid_keep_alive"
    assert states(roomy)[RERANKER]["state"] == "configured"  # a bad request loads nothing


def test_it_evicts_and_is_evicted_when_idle(tight: LiveServer) -> None:
    assert states(tight)[RERANKER]["state"] == "configured"  # CHAT_PRELOAD=none
    evictions = metric(tight, "egemma_model_evictions_total")
    assert rerank(tight).status_code == 200  # first use loads it
    assert states(tight)[RERANKER]["state"] == "loaded"
    assert chat(tight).status_code == 200  # SmolLM2 needs the room: the idle reranker goes
    now = states(tight)
    assert (now[SMOL]["state"], now[RERANKER]["state"]) == ("loaded", "configured")
    assert rerank(tight).status_code == 200
    now = states(tight)
    assert (now[SMOL]["state"], now[RERANKER]["state"]) == ("configured", "loaded")
    assert metric(tight, "egemma_model_evictions_total") == evictions + 2


def test_a_model_in_use_is_not_evicted_for_the_reranker(tight: LiveServer) -> None:
    assert chat(tight).status_code == 200
    result: dict[str, Any] = {}

    def ask() -> None:
        result["response"] = rerank(tight)
        result["at"] = time.monotonic()

    body = {"model": SMOL, "input": "Write a long story.", "max_output_tokens": 200, "stream": True}
    worker = threading.Thread(target=ask)
    mid: dict[str, Any] = {}
    with httpx.stream(
        "POST", f"{tight.base_url}/v1/responses", json=body, headers=AUTH, timeout=180
    ) as stream:
        deltas = 0
        for line in stream.iter_lines():
            if line.startswith("event: response.output_text.delta"):
                deltas += 1
                if deltas == 3:  # the rerank request waits while the stream still runs
                    worker.start()
                    mid = wait_waiting(tight, RERANKER)
        ended = time.monotonic()
    worker.join(180)
    assert mid[SMOL]["state"] == "loaded"
    assert mid[SMOL]["in_use"] >= 1
    assert mid[RERANKER]["state"] == "configured"  # waiting, not loaded over the budget
    assert mid[RERANKER]["in_use"] == 1
    assert result["response"].status_code == 200, result["response"].text
    assert result["at"] >= ended - 0.5
    assert states(tight)[RERANKER]["state"] == "loaded"


def test_a_broken_reranker_loaded_on_first_use_is_a_503(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "egemma-reranker.json").write_text(
        json.dumps({"format_version": 1, "name": "b", "max_seq_length": 8}), encoding="utf-8"
    )
    (broken / "model.onnx").write_bytes(b"not a graph")
    (broken / "tokenizer.json").write_text("{}", encoding="utf-8")
    server = _start(tmp_path / "data", broken, CHAT_MODEL_ENABLED="false", CHAT_PRELOAD="none")
    try:
        assert states(server)["b"]["state"] == "configured"
        first = rerank(server)
        again = rerank(server)  # the next request tries again, and fails alike
        entry = states(server)["b"]
        models = httpx.get(f"{server.base_url}/v1/models", headers=AUTH, timeout=10)
    finally:
        server.stop()
    assert first.status_code == 503, first.text
    assert first.json()["error"]["code"] == "model_load_failed"
    assert "Retry-After" in first.headers
    assert again.status_code == 503
    assert entry["state"] == "error"
    assert entry["error"]
    assert models.status_code == 200  # the rest serves


def test_egemma_models_shows_the_reranker(exported: Path, tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),  # the sources under test
        "DATA_DIR": str(tmp_path),
        "HOME": str(tmp_path),
        "EMBEDDING_ENABLED": "false",
        "RERANK_MODEL_PATH": str(exported),
        "MODEL_MEMORY_BUDGET": "300MiB",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "egemma", "--env-file", "/nonexistent", "models"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    entries = {e["spec"]: e for e in json.loads(proc.stdout)}
    entry = entries[str(exported)]
    assert entry["capability"] == "rerank"
    assert entry["setting"] == "RERANK_MODEL_PATH"
    assert entry["status"] == "ok"
    assert entry["estimated_bytes"] == folder_size(exported)
    assert entry["fits_memory_budget"] is True


def test_the_reranker_is_not_evicted_while_it_scores(tight: LiveServer) -> None:
    """A long request (1,000 pairs of 128 tokens: over a second of scoring) holds the reranker;
    a chat request that needs its room waits for it to finish, then evicts it."""
    assert rerank(tight).status_code == 200
    assert states(tight)[RERANKER]["state"] == "loaded"
    docs = [f"{'word ' * 200}{i}" for i in range(1000)]
    result: dict[str, Any] = {}

    def long_rerank() -> None:
        result["rerank"] = rerank(tight, documents=docs, return_documents=False)
        result["rerank_at"] = time.monotonic()

    def ask_chat() -> None:
        result["chat"] = chat(tight)
        result["chat_at"] = time.monotonic()

    scorer = threading.Thread(target=long_rerank)
    asker = threading.Thread(target=ask_chat)
    scorer.start()
    deadline = time.monotonic() + 30
    while states(tight)[RERANKER]["in_use"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    asker.start()
    time.sleep(0.2)
    mid = states(tight)
    scorer.join(180)
    asker.join(180)
    assert mid[RERANKER]["state"] == "loaded"
    assert mid[SMOL]["state"] == "configured"  # waiting for the room the reranker holds
    assert result["rerank"].status_code == 200, result["rerank"].text
    assert len(result["rerank"].json()["results"]) == 1000
    assert result["chat"].status_code == 200, result["chat"].text
    assert result["chat_at"] > result["rerank_at"]
    now = states(tight)
    assert (now[SMOL]["state"], now[RERANKER]["state"]) == ("loaded", "configured")
