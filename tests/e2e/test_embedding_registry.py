"""The embedding model under the model registry, through the real server: the shipped
all-MiniLM-L6-v2 (exported at test time, ≈ 87 MiB) beside SmolLM2 (≈ 238 MiB at 2048 tokens).

``roomy`` preloads both (CHAT_PRELOAD's default) with a 3 s MODEL_IDLE_TTL; ``tight`` has a
300 MiB budget that holds one of the two, so each evicts the other when idle, and waits while
the other is in use.
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
from egemma.services.models.embedding import ManagedEmbeddingEngine
from egemma.services.models.gguf import read_header
from egemma.settings import ModelSettings
from tests.e2e.conftest import KEY, SMOL, real_settings
from tests.fakes.embedding_models import build_minilm_onnx
from tests.servers import LiveServer

AUTH = {"Authorization": f"Bearer {KEY}"}
MINILM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_minilm_onnx(tmp_path_factory)


def _server(tmp: Path, model: Path, **env: str) -> Iterator[LiveServer]:
    settings = real_settings(
        tmp,
        EMBEDDING_ENABLED="true",
        EMBEDDING_MODEL_PATH=str(model),
        CHAT_EXTRA_MODELS="",
        EMBED_RATE_LIMIT_CALLS="100000",
        EMBEDDING_DISK_CACHE_BYTES="0",
        **env,
    )
    server = LiveServer(create_app(settings))
    server.start(timeout=300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory, minilm: Path) -> Iterator[LiveServer]:
    yield from _server(tmp_path_factory.mktemp("roomy"), minilm, MODEL_IDLE_TTL="3")


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory, minilm: Path) -> Iterator[LiveServer]:
    yield from _server(
        tmp_path_factory.mktemp("tight"),
        minilm,
        CHAT_PRELOAD="none",
        # Room for SmolLM2 with one context of KV or the embedder, not both (the batched
        # engine's CHAT_PARALLEL contexts of KV would not fit at all).
        CHAT_ENGINE="single",
        MODEL_MEMORY_BUDGET="300MiB",
        MODEL_LOAD_TIMEOUT="120",
    )


def states(server: LiveServer) -> dict[str, dict[str, Any]]:
    body = httpx.get(f"{server.base_url}/health", timeout=10).json()
    return {m["id"]: m for m in body["models"]["models"]}


def metric(server: LiveServer, name: str) -> float:
    for line in httpx.get(f"{server.base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def embed(server: LiveServer, text: str, **extra: Any) -> httpx.Response:
    body = {"input": text, "encoding_format": "float", **extra}
    return httpx.post(f"{server.base_url}/v1/embeddings", json=body, headers=AUTH, timeout=180)


def wait_waiting(server: LiveServer, model: str, seconds: float = 10) -> dict[str, dict[str, Any]]:
    """The models' states once a request for ``model`` is waiting for it (or after ``seconds``):
    sampled at once, not after a fixed sleep, which a fast decode outruns."""
    deadline = time.monotonic() + seconds
    now = states(server)
    while now[model]["in_use"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
        now = states(server)
    return now


def wait_state(server: LiveServer, model: str, state: str, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    now = states(server)[model]["state"]
    while now != state and time.monotonic() < deadline:
        time.sleep(0.1)
        now = states(server)[model]["state"]
    return now


def test_the_default_preload_loads_the_embedding_model_and_lists_it(
    roomy: LiveServer, minilm: Path
) -> None:
    assert "embedding" in ModelSettings(_env_file=None).preload()  # type: ignore[call-arg]
    listing = httpx.get(f"{roomy.base_url}/v1/models", headers=AUTH, timeout=10).json()
    models = {m["id"]: m for m in listing["data"]}
    entry = models[MINILM]
    assert entry["capabilities"] == ["embeddings"]
    assert entry["state"] == "loaded"  # preloaded at startup, within the 3 s idle TTL
    folder = sum(f.stat().st_size for f in minilm.rglob("*") if f.is_file())
    assert entry["memory"]["estimated_bytes"] == folder
    assert entry["available"] is True
    # Counted in the budget beside the chat model.
    assert listing["memory_used_bytes"] >= folder + models[SMOL]["memory"]["estimated_bytes"]
    health = states(roomy)[MINILM]
    assert health["kind"] == "embedding"
    engine = roomy.app.state.egemma.engines.embedding
    assert isinstance(engine, ManagedEmbeddingEngine)
    assert engine.entry.engine is not None
    # The facts-file identity is the loaded session's: cache keys do not change on reload.
    assert engine.identity == engine.entry.engine.identity


def test_idle_ttl_unloads_it_and_the_next_request_loads_it(roomy: LiveServer) -> None:
    first = embed(roomy, "the idle model is unloaded").json()["data"][0]["embedding"]
    unloads = metric(roomy, "egemma_model_unloads_total")
    assert wait_state(roomy, MINILM, "configured") == "configured"
    assert metric(roomy, "egemma_model_unloads_total") >= unloads + 1
    # A cached text needs no model: answered without loading it.
    loads = metric(roomy, "egemma_model_loads_total")
    again = embed(roomy, "the idle model is unloaded")
    assert again.status_code == 200
    assert again.json()["data"][0]["embedding"] == first
    assert states(roomy)[MINILM]["state"] == "configured"
    # A new text loads it on first use, with the same vectors as before.
    r = embed(roomy, "a text nobody embedded yet")
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 384
    assert states(roomy)[MINILM]["state"] == "loaded"
    assert metric(roomy, "egemma_model_loads_total") == loads + 1


def test_keep_alive_on_embeddings(roomy: LiveServer) -> None:
    r = embed(roomy, "keep it loaded forever", keep_alive=-1)
    assert r.status_code == 200, r.text
    time.sleep(4)  # past MODEL_IDLE_TTL
    assert states(roomy)[MINILM]["state"] == "loaded"
    r = embed(roomy, "then unload it at once", keep_alive="0")
    assert r.status_code == 200
    assert wait_state(roomy, MINILM, "configured", seconds=10) == "configured"
    bad = embed(roomy, "x", keep_alive="whenever")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "keep_alive"
    assert bad.json()["error"]["code"] == "invalid_keep_alive"


def chat(server: LiveServer) -> httpx.Response:
    body = {"model": SMOL, "input": "Say hi.", "max_output_tokens": 4}
    return httpx.post(f"{server.base_url}/v1/responses", json=body, headers=AUTH, timeout=180)


def test_it_evicts_and_is_evicted_when_idle(tight: LiveServer) -> None:
    assert states(tight)[MINILM]["state"] == "configured"  # CHAT_PRELOAD=none
    evictions = metric(tight, "egemma_model_evictions_total")
    assert embed(tight, "first use loads it").status_code == 200
    assert states(tight)[MINILM]["state"] == "loaded"
    assert chat(tight).status_code == 200  # SmolLM2 needs the room: the idle embedder goes
    now = states(tight)
    assert (now[SMOL]["state"], now[MINILM]["state"]) == ("loaded", "configured")
    assert embed(tight, "and back again").status_code == 200
    now = states(tight)
    assert (now[SMOL]["state"], now[MINILM]["state"]) == ("configured", "loaded")
    assert metric(tight, "egemma_model_evictions_total") == evictions + 2


def test_a_model_in_use_is_not_evicted_for_the_embedder(tight: LiveServer) -> None:
    assert chat(tight).status_code == 200
    result: dict[str, Any] = {}

    def ask() -> None:
        result["response"] = embed(tight, "waits for the stream to end")
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
                if deltas == 3:  # the embedding request waits while the stream still runs
                    worker.start()
                    mid = wait_waiting(tight, MINILM)
        ended = time.monotonic()
    worker.join(180)
    assert mid[SMOL]["state"] == "loaded"
    assert mid[SMOL]["in_use"] >= 1
    assert mid[MINILM]["state"] == "configured"  # waiting, not loaded over the budget
    assert mid[MINILM]["in_use"] == 1
    assert result["response"].status_code == 200, result["response"].text
    assert result["at"] >= ended - 0.5
    assert states(tight)[MINILM]["state"] == "loaded"


def test_egemma_models_shows_the_embedding_model_and_both_budgets(
    minilm: Path, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),  # the sources under test
        "DATA_DIR": str(tmp_path),
        "HOME": str(tmp_path),
        "EMBEDDING_MODEL_PATH": str(minilm),
        "MODEL_MEMORY_BUDGET": "300MiB",
        "MODEL_VRAM_BUDGET": "4GiB",  # as if a GPU were there: the SmolLM2 split is shown
        "CHAT_N_GPU_LAYERS": "10",
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
    folder = sum(f.stat().st_size for f in minilm.rglob("*") if f.is_file())
    embedder = entries[str(minilm)]
    assert embedder["status"] == "ok"
    assert embedder["estimated_bytes"] == folder
    assert embedder["fits_memory_budget"] is True
    smol = entries[f"builtin:{SMOL}"]
    assert smol["gpu_layers"] == 10  # of 30: a third of the KV cache and the compute buffer
    header = read_header(Path(smol["path"]))
    last_ten = sum(
        t.nbytes
        for t in header.tensors
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= 20
    )
    assert smol["vram_estimated_bytes"] == (
        last_ten + smol["kv_cache_bytes"] // 3 + smol["compute_bytes"]
    )
    assert smol["estimated_bytes"] < smol["weights_bytes"] + smol["kv_cache_bytes"]
    assert smol["fits_vram_budget"] is True
    assert "MODEL_VRAM_BUDGET" in proc.stderr


def test_keep_alive_on_rerank_by_cosine(roomy: LiveServer) -> None:
    """Without a cross-encoder /v1/rerank embeds: its keep_alive is the embedding model's."""
    url = f"{roomy.base_url}/v1/rerank"
    body = {"query": "a query for the idle test", "documents": ["a fresh document", "another"]}
    r = httpx.post(url, json={**body, "keep_alive": -1}, headers=AUTH, timeout=180)
    assert r.status_code == 200, r.text
    assert r.json()["scorer"] == "embedding_cosine"
    assert states(roomy)[MINILM]["keep_alive"] == -1
    assert states(roomy)[MINILM]["state"] == "loaded"
    body = {"query": "another query", "documents": ["texts nobody embedded before"]}
    r = httpx.post(url, json={**body, "keep_alive": "0"}, headers=AUTH, timeout=180)
    assert r.status_code == 200, r.text
    # Unloaded at once, well before the 3 s MODEL_IDLE_TTL would have done it.
    assert wait_state(roomy, MINILM, "configured", seconds=1.5) == "configured"
    bad = httpx.post(url, json={**body, "keep_alive": []}, headers=AUTH, timeout=30)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_keep_alive"
