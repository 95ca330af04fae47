"""``/metrics`` (Prometheus, bounded labels, no secrets), the per-request log line, and the rule
that no log ever holds the key or prompt text unless ``LOG_PROMPTS`` asks for it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re

import httpx
import pytest
from asgi_lifespan import LifespanManager

from egemma.app import create_app
from egemma.runtime import Engines
from egemma.settings import Settings
from tests.conftest import make_settings
from tests.fakes.chat import FakeChatEngine, fake_engines
from tests.fakes.embeddings import FakeEmbeddingEngine

pytestmark = pytest.mark.anyio

KEY = "sk-SENTINEL-KEY-5f2e9a0c41"
PROMPT = "SENTINEL-PROMPT-77c1d0"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def settings() -> Settings:
    return make_settings(WORKBENCH_API_KEY=KEY, EMBED_RATE_LIMIT_CALLS=1000)


@pytest.fixture
def engines() -> Engines:
    engines = fake_engines(FakeChatEngine("fake"), FakeChatEngine("broken", fail_after=1))
    engines.embedding = FakeEmbeddingEngine(dimension=16)
    engines.capability("embeddings").status = "loaded"
    return engines


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        base, _, rest = metric.partition("{")
        got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p))
        if base == name and got == want:
            return float(value)
    return None


async def test_metrics_are_public_prometheus_text(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/responses", json={"input": "hi"}, headers=AUTH)
    assert resp.status_code == 200
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    route = {"method": "POST", "route": "/v1/responses", "status": "200"}
    assert sample(text, "egemma_http_requests_total", **route) == 1.0
    assert sample(text, "egemma_http_request_duration_seconds_count", **route) == 1.0
    assert sample(text, "egemma_generated_tokens_total", model="fake") == 5.0
    assert sample(text, "egemma_time_to_first_token_seconds_count", model="fake") == 1.0
    assert sample(text, "egemma_generation_tokens_per_second_count", model="fake") == 1.0
    assert sample(text, "egemma_generations_total", model="fake", outcome="completed") == 1.0
    assert sample(text, "egemma_queue_depth", model="fake") == 0.0
    assert sample(text, "egemma_model_busy", model="fake") == 0.0
    assert sample(text, "egemma_queue_admitted_total", model="fake") == 1.0
    assert sample(text, "egemma_capability_status", capability="chat", state="loaded") == 1.0
    assert sample(text, "egemma_model_loaded", capability="chat", model="fake") == 1.0
    assert sample(text, "egemma_draining") == 0.0


async def test_failed_generations_are_counted(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/responses", json={"model": "broken", "input": "hi"}, headers=AUTH)
    assert resp.json()["status"] == "failed"
    text = (await client.get("/metrics")).text
    assert sample(text, "egemma_generations_total", model="broken", outcome="failed") == 1.0


async def test_a_failed_chat_completion_is_a_500_not_an_empty_success(
    client: httpx.AsyncClient,
) -> None:
    body = {"model": "broken", "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert resp.status_code == 500, resp.text
    assert resp.json()["error"]["code"] == "server_error"
    ok = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
    assert (await client.post("/v1/chat/completions", json=ok, headers=AUTH)).status_code == 200


async def test_labels_are_route_templates_and_hold_no_secrets(client: httpx.AsyncClient) -> None:
    await client.get("/v1/conversations/conv_RAWID12345", headers=AUTH)
    await client.get("/some/random/path-xyz987")
    await client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}x"})
    await client.get(f"/v1/models?api_key={KEY}")
    text = (await client.get("/metrics")).text
    labels = {"method": "GET", "route": "/v1/conversations/{conversation_id}", "status": "404"}
    assert sample(text, "egemma_http_requests_total", **labels) == 1.0
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
    assert sample(text, "egemma_http_requests_total", **unmatched) == 1.0
    assert (
        sample(
            text,
            "egemma_http_requests_total",
            **{**unmatched, "route": "/v1/models", "status": "401"},
        )
        == 2.0
    )
    for secret in ("RAWID12345", "xyz987", KEY, hashlib.sha256(KEY.encode()).hexdigest()):
        assert secret not in text


async def test_cache_counters_are_read_at_scrape_time(client: httpx.AsyncClient) -> None:
    body = {"input": "cache me"}
    for _ in range(20):
        assert (await client.post("/v1/embeddings", json=body, headers=AUTH)).status_code == 200
        hits = sample(
            (await client.get("/metrics")).text, "egemma_cache_hits_total", cache="embeddings"
        )
        if hits:
            break
        await asyncio.sleep(0.05)
    text = (await client.get("/metrics")).text
    assert (sample(text, "egemma_cache_hits_total", cache="embeddings") or 0) >= 1
    assert (sample(text, "egemma_cache_misses_total", cache="embeddings") or 0) >= 1
    assert sample(text, "egemma_cache_errors_total", cache="embeddings") == 0.0


async def test_metrics_can_require_the_key(engines: Engines) -> None:
    settings = make_settings(WORKBENCH_API_KEY=KEY, METRICS_REQUIRE_KEY="true")
    app = create_app(settings, engines=engines)
    async with LifespanManager(app) as mgr:
        transport = httpx.ASGITransport(app=mgr.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            assert (await http.get("/metrics")).status_code == 401
            assert (await http.get("/metrics", headers=AUTH)).status_code == 200


async def test_one_log_line_per_request_with_ids_and_sizes(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="egemma.access")
    resp = await client.post(
        "/v1/responses", json={"input": "hi"}, headers={**AUTH, "X-Request-Id": "trace-42"}
    )
    assert resp.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "egemma.access"]
    assert len(lines) == 1
    fields = dict(re.findall(r"(\w+)=(\S+)", lines[0]))
    assert fields["method"] == "POST"
    assert fields["route"] == "/v1/responses"
    assert fields["status"] == "200"
    assert fields["request_id"] == "trace-42"
    assert int(fields["bytes_in"]) > 0
    assert int(fields["bytes_out"]) == len(resp.content)
    assert float(fields["duration_ms"]) >= 0


async def test_logs_never_hold_the_key_or_prompt_text(
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    say = {"input": f"{PROMPT} say hi", "instructions": PROMPT}
    requests = [
        ("POST", "/v1/responses", say),
        ("POST", "/v1/responses", {**say, "stream": True}),
        ("POST", "/v1/responses", {**say, "model": "broken"}),
        ("POST", "/v1/responses", {**say, "tools": [{"type": "function", "name": PROMPT}]}),
        ("POST", "/v1/responses", {**say, "metadata": {PROMPT * 4: "x"}}),
        ("POST", "/v1/responses/input_tokens", say),
        ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}]}),
        ("POST", "/v1/conversations", {"items": [{"role": "user", "content": PROMPT}]}),
        ("POST", "/v1/embeddings", {"input": PROMPT}),
        ("GET", f"/v1/conversations/{PROMPT}", None),
    ]
    for method, path, body in requests:
        resp = await client.request(method, path, json=body, headers=AUTH)
        assert resp.status_code < 500, (path, resp.text)
    for header in (f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Basic {KEY}"):
        resp = await client.get("/v1/models", headers={"Authorization": header})
        assert resp.status_code == 401
    await client.get(f"/v1/models?api_key={KEY}")
    captured = capfd.readouterr()
    # The test's own client logs the URLs it requests; only the server's logs are under test.
    server = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    logged = "\n".join(caplog.handler.format(r) for r in server)
    everything = logged + captured.out + captured.err
    assert sum(r.name == "egemma.access" for r in server) == len(requests) + 4
    assert KEY not in everything
    assert KEY[:-1] not in everything
    assert PROMPT not in everything


async def test_log_prompts_opts_in(engines: Engines, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="egemma.prompts")
    settings = make_settings(WORKBENCH_API_KEY=KEY, LOG_PROMPTS="true")
    app = create_app(settings, engines=engines)
    async with LifespanManager(app) as mgr:
        transport = httpx.ASGITransport(app=mgr.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            await http.post("/v1/responses", json={"input": PROMPT}, headers=AUTH)
    assert PROMPT in caplog.text
    assert KEY not in caplog.text
