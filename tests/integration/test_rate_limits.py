"""Independent buckets per key: 429 + Retry-After + the phrase clients parse."""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import APIRouter, Depends

from egemma.app import create_app
from egemma.ratelimit import rate_limit
from egemma.runtime import Engines
from egemma.security import require_api_key
from tests.conftest import AUTH, make_settings
from tests.servers import LiveServer


def _app_with_probe_routes(**env: str):  # type: ignore[no-untyped-def]
    app = create_app(
        make_settings(WORKBENCH_API_KEY="test-key-0123456789abcdef", **env), engines=Engines()
    )
    probe = APIRouter()

    @probe.get(
        "/probe/embed", dependencies=[Depends(require_api_key), Depends(rate_limit("embed"))]
    )
    async def embed_probe() -> dict[str, bool]:
        return {"ok": True}

    @probe.get("/probe/chat", dependencies=[Depends(require_api_key), Depends(rate_limit("chat"))])
    async def chat_probe() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(probe)
    return app


def test_exhausted_bucket_leaves_others_alone() -> None:
    server = LiveServer(
        _app_with_probe_routes(EMBED_RATE_LIMIT_CALLS="3", EMBED_RATE_LIMIT_SECONDS="30")
    )
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, headers=AUTH) as http:
            for _ in range(3):
                assert http.get("/probe/embed").status_code == 200
            over = http.get("/probe/embed")
            assert over.status_code == 429
            retry = int(over.headers["retry-after"])
            assert 1 <= retry <= 30
            match = re.search(r"Try again in (\d+) seconds", over.json()["error"]["message"])
            assert match is not None
            assert over.json()["error"]["type"] == "rate_limit_error"
            assert http.get("/probe/chat").status_code == 200
    finally:
        server.stop()


def test_unauthenticated_calls_do_not_spend_the_bucket() -> None:
    server = LiveServer(_app_with_probe_routes(EMBED_RATE_LIMIT_CALLS="2"))
    server.start()
    try:
        with httpx.Client(base_url=server.base_url) as http:
            for _ in range(5):
                assert http.get("/probe/embed").status_code == 401
            assert http.get("/probe/embed", headers=AUTH).status_code == 200
    finally:
        server.stop()


@pytest.mark.anyio
async def test_bucket_refills(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    app = _app_with_probe_routes(EMBED_RATE_LIMIT_CALLS="1", EMBED_RATE_LIMIT_SECONDS="1")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as http:
        assert (await http.get("/probe/embed")).status_code == 200
        assert (await http.get("/probe/embed")).status_code == 429
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 2.0)
        assert (await http.get("/probe/embed")).status_code == 200


def test_input_tokens_spends_the_chat_bucket() -> None:
    """Counting tokens renders and tokenizes the whole prompt: it is limited like a generation."""
    from tests.conftest import TEST_KEY
    from tests.fakes.chat import FakeChatEngine, fake_engines

    settings = make_settings(
        WORKBENCH_API_KEY=TEST_KEY, CHAT_RATE_LIMIT_CALLS="2", CHAT_RATE_LIMIT_SECONDS="60"
    )
    server = LiveServer(create_app(settings, engines=fake_engines(FakeChatEngine("fake"))))
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=30) as http:
            for _ in range(2):
                ok = http.post("/v1/responses/input_tokens", json={"input": "hi"})
                assert ok.status_code == 200, ok.text
            over = http.post("/v1/responses/input_tokens", json={"input": "hi"})
            assert over.status_code == 429
    finally:
        server.stop()
