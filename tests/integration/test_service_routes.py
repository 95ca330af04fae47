"""Health, readiness, rate limits, errors and the generated key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from egemma.app import create_app
from egemma.engines.base import CapabilityStatus
from egemma.runtime import Engines
from tests.conftest import AUTH, make_settings


@pytest.mark.anyio
async def test_health_reports_each_capability(client: httpx.AsyncClient) -> None:
    body = (await client.get("/health")).json()
    for key in ("chat_model", "local_summarization_model", "gemini_api", "embedding_model"):
        assert body[key]["status"] in ("loaded", "not_loaded", "disabled", "error")
    assert body["status"] in ("ok", "degraded", "starting")


@pytest.mark.anyio
async def test_ready_is_503_until_loaded() -> None:
    engines = Engines()
    for key in ("chat", "local_summarization", "embeddings"):
        engines.status[key] = CapabilityStatus(name=key, status="not_loaded")
    engines.status["gemini"] = CapabilityStatus(name="gemini", status="disabled")
    app = create_app(make_settings(WORKBENCH_API_KEY="k"), engines=engines)
    async with LifespanManager(app) as mgr:
        transport = httpx.ASGITransport(app=mgr.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            resp = await http.get("/ready")
            assert resp.status_code == 503
            assert set(resp.json()["not_ready"]) == {"chat", "local_summarization", "embeddings"}
            for key in ("chat", "local_summarization", "embeddings"):
                engines.status[key].status = "loaded"
            assert (await http.get("/ready")).status_code == 200
            engines.status["embeddings"].status = "error"
            engines.status["embeddings"].reason = "EMBEDDING_MODEL_PATH: missing"
            health = (await http.get("/health")).json()
            assert health["status"] == "degraded"
            assert health["embedding_model"]["reason"].startswith("EMBEDDING_MODEL_PATH")


@pytest.mark.anyio
async def test_rate_limits_shape(client: httpx.AsyncClient) -> None:
    assert (await client.get("/rate-limits")).json() == {
        "embed": {"calls": 5, "seconds": 10},
        "summarize": {"calls": 2, "seconds": 60},
        "chat": {"calls": 100, "seconds": 60},
        "conversation": {"calls": 100, "seconds": 60},
    }


@pytest.mark.anyio
async def test_unknown_route_is_openai_404(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/nope", headers=AUTH)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    assert resp.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.anyio
async def test_request_id_on_every_response(client: httpx.AsyncClient) -> None:
    resp = await client.get("/health", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    resp = await client.get("/nope", headers={"X-Request-Id": "bad id\twith tab"})
    assert resp.headers["x-request-id"].startswith("req_")


def test_key_generated_once_owner_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(DATA_DIR=str(tmp_path / "d"))
    create_app(settings, engines=Engines())
    key_file = tmp_path / "d" / "api_key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    key = key_file.read_text().strip()
    assert key in capsys.readouterr().err
    create_app(settings, engines=Engines())
    assert key not in capsys.readouterr().err  # printed once only
    assert key_file.read_text().strip() == key


@pytest.mark.anyio
async def test_head_probes_on_health_and_ready(client: httpx.AsyncClient) -> None:
    health = await client.head("/health")
    assert health.status_code == 200
    assert health.content == b""
    assert (await client.head("/ready")).status_code in (200, 503)
