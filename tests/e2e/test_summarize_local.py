"""``/summarize`` with the shipped SmolLM2 GGUF: one call, cache hits, map-reduce, the queue.

Tiny model: assert the shape of the answer and how many model calls ran, never its quality.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from egemma.app import create_app
from egemma.modelfiles import resolve
from egemma.runtime import Engines
from egemma.settings import ChatSettings, Settings
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.servers import LiveServer

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CODE = b'''"""Small helpers."""


def add(a: int, b: int) -> int:
    """Return the sum."""
    return a + b
'''


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from egemma.engines.llamacpp import LlamaChatEngine

    data_dir = tmp_path_factory.mktemp("models")
    model = resolve("builtin:smollm2-135m-instruct", "CHAT_MODEL_PATH", data_dir)
    chat = ChatSettings(_env_file=None, n_ctx=512, n_threads=2, queue_size=1)  # type: ignore[call-arg]
    loaded = LlamaChatEngine.load("smollm2-135m-instruct", Path(model.path), chat)
    yield loaded
    loaded.close()


def _settings(**env: Any) -> Settings:
    return make_settings(WORKBENCH_API_KEY=TEST_KEY, SUMMARIZE_RATE_LIMIT_CALLS=1000, **env)


def _engines(engine: Any) -> Engines:
    engines = Engines(chat={engine.name: engine}, chat_default=engine.name, summary=engine)
    engines.capability("local_summarization").status = "loaded"
    return engines


@pytest.fixture
async def client_for(engine: Any) -> AsyncIterator[Any]:
    managers: list[LifespanManager] = []

    async def make(**env: Any) -> tuple[httpx.AsyncClient, Any]:
        app = create_app(_settings(**env), engines=_engines(engine))
        manager = LifespanManager(app)
        await manager.__aenter__()
        managers.append(manager)
        transport = httpx.ASGITransport(app=manager.app)
        return httpx.AsyncClient(transport=transport, base_url="http://t", timeout=300), app

    yield make
    for manager in managers:
        await manager.__aexit__(None, None, None)


async def _summarize(http: httpx.AsyncClient, content: bytes, name: str, **form: Any) -> Any:
    return await http.post("/summarize", files={"file": (name, content)}, data=form, headers=AUTH)


async def test_local_summary_then_cache_hit(client_for: Any, engine: Any) -> None:
    http, app = await client_for()
    admitted = engine.admission_stats().admitted
    first = await _summarize(http, CODE, "helpers.py", max_tokens="12", temperature="0")
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["language"] == "Python"
    assert body["model"] == engine.name
    assert (body["cached"], body["chunks"]) == (False, 1)
    assert isinstance(body["summary"], str)
    assert body["summary"].strip()
    assert engine.admission_stats().admitted == admitted + 1
    second = await _summarize(http, CODE, "helpers.py", max_tokens="12", temperature="0")
    assert second.json() == {**body, "cached": True}
    assert engine.admission_stats().admitted == admitted + 1  # no model call for the hit
    assert app.state.egemma.services.summarize.model_calls == 1


async def test_content_beyond_the_context_is_map_reduced(client_for: Any, engine: Any) -> None:
    """512 tokens of context, ~600 of content: split into parts, then one reduce call."""
    http, app = await client_for()
    functions = "".join(f"def handler_{i}(req):\n    return reply(req, {i})\n\n" for i in range(24))
    r = await _summarize(http, functions.encode(), "handlers.py", max_tokens="16", temperature="0")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["chunks"] >= 2
    assert isinstance(body["summary"], str)
    # One call per part, then at least one reduce call.
    assert app.state.egemma.services.summarize.model_calls >= body["chunks"] + 1


async def test_too_many_chunks_is_413_before_any_call(client_for: Any) -> None:
    http, app = await client_for(SUMMARY_CHUNK_TOKENS=40, SUMMARY_MAX_CHUNKS=3)
    text = "".join(f"line number {i} of a long file\n" for i in range(200)).encode()
    r = await _summarize(http, text, "long.txt", max_tokens="16")
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "content_too_long"
    assert app.state.egemma.services.summarize.model_calls == 0


async def test_max_tokens_beyond_context_is_400(client_for: Any) -> None:
    http, _ = await client_for()
    r = await _summarize(http, CODE, "helpers.py", max_tokens="4000")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


async def test_full_queue_is_503(client_for: Any, engine: Any) -> None:
    """queue_size=1: one running, one waiting, the third is turned away with Retry-After."""
    http, _ = await client_for()
    files = [f"def f{i}(): return {i}\n".encode() for i in range(3)]
    results = await asyncio.gather(
        *(_summarize(http, f, f"f{i}.py", max_tokens="8") for i, f in enumerate(files))
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 200, 503]
    busy = next(r for r in results if r.status_code == 503)
    assert int(busy.headers["Retry-After"]) >= 1


def test_real_server_local_summary(engine: Any) -> None:
    server = LiveServer(create_app(_settings(), engines=_engines(engine)))
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=300) as http:
            r = http.post(
                "/summarize",
                files={"file": ("guide.md", b"# Install\n\nRun `make install`.\n")},
                data={"max_tokens": "24", "goal": "set it up"},
            )
    finally:
        server.stop()
    assert r.status_code == 200, r.text
    assert r.json()["language"] == "Markdown"
    assert r.json()["chunks"] == 1


async def test_departed_client_stops_the_work_and_caches_nothing(engine: Any) -> None:
    from egemma.errors import UnavailableError
    from egemma.personas import PersonaRegistry, default_personas_dir
    from egemma.services.prompting.formats import PromptFormats
    from egemma.services.summarize.service import SummarizeService, SummaryRequest

    settings = _settings()
    registry = PersonaRegistry.from_directory(default_personas_dir())
    prompts = PromptFormats(settings.chat.prompt_format, settings.server.models_root)
    service = SummarizeService.create(settings, _engines(engine), registry, prompts)

    async def gone() -> bool:
        return True

    request = SummaryRequest(filename="a.py", data=CODE, max_tokens=8)
    with pytest.raises(UnavailableError) as info:
        await service.summarize(request, gone)
    assert info.value.code == "client_disconnected"
    assert service.model_calls == 0
    assert service.cache.misses == 1
    await service.aclose()
