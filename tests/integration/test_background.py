"""Background responses on two apps sharing one store (SQLite file or PostgreSQL): started on
one, polled, resumed and cancelled through the other, so the cancel travels through the store,
not an in-process flag. Fake engine, real Hypercorn, openai-python."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from egemma.app import create_app
from egemma.services.responses import background
from egemma.settings import Settings
from egemma.store.factory import store_from_settings
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.chat import FakeChatEngine, fake_engines
from tests.servers import LiveServer

SLOW = " ".join(f"word{i}" for i in range(400))


@pytest.fixture
def settings(store_backend: dict[str, str]) -> Settings:
    return make_settings(
        WORKBENCH_API_KEY=TEST_KEY, CHAT_RATE_LIMIT_CALLS="100000", **store_backend
    )


@pytest.fixture
def engine() -> FakeChatEngine:
    return FakeChatEngine(script=SLOW, delay=0.02)


@pytest.fixture
def pair(settings: Settings, engine: FakeChatEngine) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Replica A runs the model; replica B shares the store (its own fake is never used)."""
    a = LiveServer(create_app(settings, engines=fake_engines(engine)))
    b = LiveServer(create_app(settings, engines=fake_engines(FakeChatEngine(script="B"))))
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def sdk(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=TEST_KEY, max_retries=0)


def wait_status(client: openai.OpenAI, rid: str, statuses: set[str], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(rid)
        if response.status in statuses or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def replay(server: LiveServer, rid: str, after: int | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"stream": "true"}
    if after is not None:
        params["starting_after"] = after
    events = []
    with (
        httpx.Client(base_url=server.base_url, headers=AUTH, timeout=60) as http,
        http.stream("GET", f"/v1/responses/{rid}", params=params) as resp,
    ):
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_cancel_on_the_other_replica_stops_the_generation(
    pair: tuple[LiveServer, LiveServer], engine: FakeChatEngine
) -> None:
    a, b = pair
    created = sdk(a).responses.create(model="fake", input="hi", background=True)
    assert created.background is True
    assert created.status in ("queued", "in_progress")
    assert wait_status(sdk(b), created.id, {"in_progress"}).status == "in_progress"
    time.sleep(0.3)  # some tokens are out
    cancelled = sdk(b).responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    stopped_at = engine.tokens_generated
    assert 0 < stopped_at < 400
    time.sleep(0.5)
    assert engine.tokens_generated <= stopped_at + 1  # stopped, not finishing unseen
    assert sdk(a).responses.retrieve(created.id).status == "cancelled"
    # Cancelling again answers the cancelled response; its stream ends with response.cancelled.
    assert sdk(a).responses.cancel(created.id).status == "cancelled"
    events = replay(b, created.id)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.cancelled"
    assert events[-1]["response"]["status"] == "cancelled"


def test_poll_to_completed_and_resume_from_either_replica(
    pair: tuple[LiveServer, LiveServer], engine: FakeChatEngine
) -> None:
    a, b = pair
    engine.script = "one two three four five"
    created = sdk(a).responses.create(model="fake", input="hi", background=True)
    done = wait_status(sdk(b), created.id, {"completed", "failed"})
    assert done.status == "completed"
    assert done.background is True
    assert done.output_text == "one two three four five"
    full = replay(b, created.id)
    assert full[0]["type"] == "response.created"
    assert full[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in full] == list(range(len(full)))
    assert replay(a, created.id, after=3) == full[4:]
    # A finished response cannot be cancelled.
    with pytest.raises(openai.BadRequestError):
        sdk(b).responses.cancel(created.id)


def test_background_needs_store_and_only_background_can_be_cancelled(
    pair: tuple[LiveServer, LiveServer], engine: FakeChatEngine
) -> None:
    a, _ = pair
    engine.script = "ok"
    with pytest.raises(openai.BadRequestError) as info:
        sdk(a).responses.create(model="fake", input="hi", background=True, store=False)
    assert info.value.body["param"] == "background"  # type: ignore[index]
    plain = sdk(a).responses.create(model="fake", input="hi")
    with pytest.raises(openai.BadRequestError):
        sdk(a).responses.cancel(plain.id)
    with pytest.raises(openai.NotFoundError):
        sdk(a).responses.cancel("resp_missing")


def test_a_run_left_by_a_dead_process_is_failed_on_start(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    rid = "resp_abandoned"

    async def leave() -> None:
        store = store_from_settings(settings)
        response = {"id": rid, "object": "response", "created_at": 1, "status": "in_progress"}
        await store.responses.save(response | {"background": True, "output": []}, [])
        await store.background.begin(rid)
        await store.close()

    asyncio.run(leave())
    monkeypatch.setattr(background, "STALE_SECONDS", 0.0)
    server = LiveServer(create_app(settings, engines=fake_engines(FakeChatEngine())))
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=30) as http:
            body = http.get(f"/v1/responses/{rid}").json()
        assert body["status"] == "failed"
        assert "stopped before it finished" in body["error"]["message"]
        events = replay(server, rid)
        assert events[-1]["type"] == "response.failed"
    finally:
        server.stop()
