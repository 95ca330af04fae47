"""Fault injection (reliability.md §5): broken model files at start, broken or full disk caches.
The server always starts; ``/health`` names the broken capability and its reason; that
capability's routes answer 503 + Retry-After while the others serve; a cache failure is served
uncached. (A locked store → 503 is in ``test_conversations_api.py``; an exception mid-stream →
``response.failed`` in ``test_disconnects.py``.)"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from egemma.app import create_app
from egemma.modelfiles import MINILM_ONNX_DIR
from egemma.runtime import Engines
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.embeddings import FakeEmbeddingEngine

pytestmark = pytest.mark.anyio

SMOL = Path.home() / ".egemma" / "models"


def _missing(tmp: Path) -> Path:
    return tmp / "nope.gguf"


def _directory(tmp: Path) -> Path:
    (tmp / "dir.gguf").mkdir()
    return tmp / "dir.gguf"


def _empty(tmp: Path) -> Path:
    (tmp / "empty.gguf").write_bytes(b"")
    return tmp / "empty.gguf"


def _wrong_magic(tmp: Path) -> Path:
    (tmp / "magic.gguf").write_bytes(b"GGML" + os.urandom(4096))
    return tmp / "magic.gguf"


def _truncated(tmp: Path) -> Path:
    # A real header start (magic, version 3, huge tensor/kv counts) and then nothing.
    header = b"GGUF" + (3).to_bytes(4, "little") + (2**40).to_bytes(8, "little") * 2
    (tmp / "truncated.gguf").write_bytes(header + os.urandom(64))
    return tmp / "truncated.gguf"


def _unreadable(tmp: Path) -> Path:
    path = tmp / "locked.gguf"
    path.write_bytes(b"GGUF" + os.urandom(64))
    path.chmod(0)
    return path


GGUF_FAULTS: dict[str, Callable[[Path], Path]] = {
    "missing": _missing,
    "directory": _directory,
    "empty": _empty,
    "wrong magic": _wrong_magic,
    "truncated": _truncated,
    "permission denied": _unreadable,
}


async def _started(env: dict[str, Any], engines: Engines | None = None) -> AsyncIterator[Any]:
    settings = make_settings(WORKBENCH_API_KEY=TEST_KEY, EMBED_RATE_LIMIT_CALLS=1000, **env)
    app = create_app(settings, engines=engines)
    async with LifespanManager(app) as mgr:
        transport = httpx.ASGITransport(app=mgr.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http, app


def check_503(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.json()["error"]["type"] == "server_error"


@pytest.mark.parametrize("fault", GGUF_FAULTS.values(), ids=GGUF_FAULTS.keys())
async def test_broken_chat_model_starts_degraded(tmp_path: Path, fault: Any) -> None:
    if fault is _unreadable and os.geteuid() == 0:
        pytest.skip("root reads any file")
    pytest.importorskip("llama_cpp")
    path = fault(tmp_path)
    env = {"CHAT_MODEL_PATH": str(path), "CHAT_EXTRA_MODELS": "", "EMBEDDING_ENABLED": "false"}
    async for http, _ in _started(env):
        health = (await http.get("/health")).json()
        assert health["status"] == "degraded"
        chat = health["chat_model"]
        assert chat["status"] == "error"
        assert path.name in chat["reason"]
        assert health["local_summarization_model"]["status"] == "error"
        assert (await http.get("/ready")).status_code == 503
        check_503(await http.post("/v1/responses", json={"input": "hi"}, headers=AUTH))
        check_503(
            await http.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}]},
                headers=AUTH,
            )
        )
        summary = await http.post(
            "/summarize", files={"file": ("a.py", b"print(1)\n")}, headers=AUTH
        )
        check_503(summary)
        # The rest still serves.
        assert (await http.get("/v1/models", headers=AUTH)).status_code == 200
        assert (await http.post("/v1/conversations", json={}, headers=AUTH)).status_code == 200


def _onnx_empty(tmp: Path) -> Path:
    (tmp / "empty-onnx").mkdir()
    return tmp / "empty-onnx"


def _onnx_corrupt(tmp: Path) -> Path:
    real = SMOL / MINILM_ONNX_DIR
    if not real.is_dir():
        pytest.skip("the exported embedding model is not prepared (make install)")
    folder = tmp / "corrupt-onnx"
    shutil.copytree(real, folder)
    for model in folder.glob("*.onnx"):
        model.write_bytes(b"\x08\x01garbage" + os.urandom(256))
    return folder


ONNX_FAULTS = {"missing": _missing, "file": _empty, "empty": _onnx_empty, "corrupt": _onnx_corrupt}


@pytest.mark.parametrize("fault", ONNX_FAULTS.values(), ids=ONNX_FAULTS.keys())
async def test_broken_embedding_model_starts_degraded(tmp_path: Path, fault: Any) -> None:
    env = {
        "EMBEDDING_MODEL_PATH": str(fault(tmp_path)),
        "CHAT_MODEL_ENABLED": "false",
        "SUMMARY_LOCAL_ENABLED": "false",
    }
    async for http, _ in _started(env):
        health = (await http.get("/health")).json()
        embeddings = health["embedding_model"]
        assert embeddings["status"] == "error"
        assert "EMBEDDING_MODEL_PATH" in embeddings["reason"]
        check_503(await http.post("/v1/embeddings", json={"input": "hi"}, headers=AUTH))
        check_503(await http.post("/embed", files={"file": ("a.txt", b"hi")}, headers=AUTH))
        assert (await http.get("/v1/models", headers=AUTH)).status_code == 200


def _embedding_engines() -> Engines:
    engines = Engines(embedding=FakeEmbeddingEngine(dimension=16))
    engines.capability("embeddings").status = "loaded"
    return engines


async def _embed_twice(http: httpx.AsyncClient) -> None:
    for _ in range(2):
        resp = await http.post("/v1/embeddings", json={"input": "same text"}, headers=AUTH)
        assert resp.status_code == 200
        assert len(resp.json()["data"][0]["embedding"]) == 16


async def test_corrupt_disk_cache_is_moved_aside(clean_env: Path) -> None:
    cache_dir = clean_env / "cache" / "embeddings"
    cache_dir.mkdir(parents=True)
    (cache_dir / "cache.db").write_bytes(b"this is not a database" * 100)
    async for http, app in _started({}, _embedding_engines()):
        await _embed_twice(http)
        assert app.state.egemma.services.embeddings.cache.errors >= 1
    assert list((clean_env / "cache").glob("embeddings.corrupt-*"))


class _FullDisk:
    """Stands in for a diskcache.Cache on a full disk: reads work, writes fail."""

    def get(self, key: str, default: Any = None, retry: bool = False) -> Any:
        return default

    def set(self, key: str, value: Any, retry: bool = False) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    def close(self) -> None:
        raise OSError(28, "No space left on device")


async def test_full_disk_cache_is_served_uncached() -> None:
    async for http, app in _started({}, _embedding_engines()):
        assert (await http.post("/v1/embeddings", json={"input": "x"}, headers=AUTH)).is_success
        cache = app.state.egemma.services.embeddings.cache
        cache._disk = _FullDisk()
        cache._lru.clear()
        cache.lru_size = 0
        await _embed_twice(http)
        for _ in range(100):  # cache writes run off the response path
            if cache.errors:
                break
            await asyncio.sleep(0.02)
        errors = cache.errors
        assert errors >= 1
        metrics = (await http.get("/metrics")).text
        # Deferred writes may still fail after the count above: the scrape sees at least it.
        match = re.search(r'egemma_cache_errors_total\{cache="embeddings"\} (\S+)', metrics)
        assert match is not None
        assert float(match.group(1)) >= errors


async def test_public_health_shows_no_absolute_paths(tmp_path: Path) -> None:
    """Issue 18 item 15: model paths and DATA_DIR are not on the public /health; file names and
    reasons are, and the key sees the full detail."""
    broken = _missing(tmp_path)
    env = {"CHAT_MODEL_PATH": str(broken), "CHAT_EXTRA_MODELS": ""}
    async for http, app in _started(env):
        settings = app.state.egemma.settings
        public = await http.get("/health")
        text = public.text
        for secret in (str(tmp_path), str(Path.home()), str(settings.server.data_dir)):
            assert secret not in text
        assert not re.search(r'"/|\s/[a-z]', text), text
        body = public.json()
        assert "nope.gguf" in body["chat_model"]["reason"]  # what an operator needs stays
        ready = await http.get("/ready")
        assert "nope.gguf" in ready.json()["reasons"]["chat"]
        assert str(tmp_path) not in ready.text
        full = (await http.get("/health", headers=AUTH)).json()
        assert str(broken) in full["chat_model"]["reason"]
        embeddings = full["embedding_model"]
        if embeddings["status"] == "loaded":  # the prepared model: its folder, in full
            assert embeddings["path"].startswith("/")
            assert body["embedding_model"]["path"] == Path(embeddings["path"]).name
        wrong = await http.get("/health", headers={"Authorization": "Bearer wrong"})
        assert str(tmp_path) not in wrong.text
