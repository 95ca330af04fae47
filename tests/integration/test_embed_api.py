"""/embed and /v1/embeddings through the app with a fake engine (httpx, in-process)."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from egemma.app import create_app
from egemma.runtime import Engines
from egemma.settings import Settings
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.embedding_models import GEMMA_PROMPTS
from tests.fakes.embeddings import FakeEmbeddingEngine

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings() -> Settings:
    return make_settings(
        WORKBENCH_API_KEY=TEST_KEY, EMBED_RATE_LIMIT_CALLS=1000, MAX_FILE_SIZE_BYTES=1000
    )


@pytest.fixture
def fake() -> FakeEmbeddingEngine:
    return FakeEmbeddingEngine(dimension=64, prompts=GEMMA_PROMPTS, matryoshka_dims=(64, 32, 16))


@pytest.fixture
def engines(fake: FakeEmbeddingEngine) -> Engines:
    engines = Engines(embedding=fake)
    status = engines.capability("embeddings")
    status.status, status.name = "loaded", fake.name
    return engines


def _unit(v: list[float]) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(arr), 1.0, rtol=1e-5)
    return arr


async def test_embed_original_shape(client: httpx.AsyncClient, fake: FakeEmbeddingEngine) -> None:
    r = await client.post(
        "/embed?dimensions=16&dimensions=64&prompt_name=query",
        files={"file": ("signature.txt", b"def f(): pass")},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["embedding_16d", "embedding_64d", "model", "dimensions"]
    assert (body["model"], body["dimensions"]) == (fake.name, 64)
    full = _unit(body["embedding_64d"])
    np.testing.assert_allclose(full, fake.vector(GEMMA_PROMPTS["query"] + "def f(): pass"), 1e-5)
    cut = _unit(body["embedding_16d"])
    np.testing.assert_allclose(cut, full[:16] / np.linalg.norm(full[:16]), rtol=1e-5)


async def test_embed_defaults_document_prompt_and_smallest_trained_size(
    client: httpx.AsyncClient, fake: FakeEmbeddingEngine
) -> None:
    r = await client.post(
        "/embed?title=Guide", files={"file": ("a.md", "# Überschrift\n".encode())}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["embedding_16d", "model", "dimensions"]
    assert fake.calls == [["title: Guide | text: # Überschrift\n"]]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"\x00\x01\x02\x03binary", "binary_file"),
        ("caf\u00e9".encode("latin-1"), "invalid_encoding"),
        (b"   \n\t ", "empty_input"),
        (b"", "empty_input"),
    ],
)
async def test_embed_rejects_bad_files(
    client: httpx.AsyncClient, content: bytes, code: str
) -> None:
    r = await client.post("/embed", files={"file": ("x.txt", content)}, headers=AUTH)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_embed_too_large_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post("/embed", files={"file": ("x.txt", b"a" * 1001)}, headers=AUTH)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_embed_pads_the_original_sizes_above_the_models(
    client: httpx.AsyncClient, fake: FakeEmbeddingEngine
) -> None:
    """cognition-cli's request: 768 only, read from ``embedding_768d``; a 64-d model's vector
    comes back zero-padded, so every similarity is the model's own."""
    r = await client.post(
        "/embed?dimensions=768&prompt_name=Retrieval-document",
        files={"file": ("signature.txt", b"function f(): void")},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["dimensions"]) == (fake.name, 64)
    vector = _unit(body["embedding_768d"])
    assert vector.shape == (768,)
    assert not vector[64:].any()
    expected = fake.vector(GEMMA_PROMPTS["Retrieval-document"] + "function f(): void")
    np.testing.assert_allclose(vector[:64], expected, rtol=1e-5)


async def test_embed_without_padding_refuses_sizes_above_the_models(
    fake: FakeEmbeddingEngine,
) -> None:
    settings = make_settings(WORKBENCH_API_KEY=TEST_KEY, EMBEDDING_PAD_DIMENSIONS="false")
    app = create_app(settings, engines=Engines(embedding=fake))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            r = await http.post(
                "/embed?dimensions=768", files={"file": ("x.txt", b"x")}, headers=AUTH
            )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "dimensions"


@pytest.mark.parametrize("query", ["dimensions=769", "dimensions=0", "prompt_name=search_query"])
async def test_embed_bad_parameters_are_400(client: httpx.AsyncClient, query: str) -> None:
    r = await client.post(f"/embed?{query}", files={"file": ("x.txt", b"hi")}, headers=AUTH)
    assert r.status_code == 400
    assert r.json()["error"]["param"] in {"dimensions", "prompt_name"}


async def test_v1_embeddings_float_and_base64(
    client: httpx.AsyncClient, fake: FakeEmbeddingEngine
) -> None:
    r = await client.post(
        "/v1/embeddings", json={"input": ["a b", "c"], "model": "whatever"}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list"
    assert body["model"] == fake.name
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    floats = np.asarray(body["data"][1]["embedding"], dtype=np.float32)
    r = await client.post(
        "/v1/embeddings",
        json={"input": "c", "model": "m", "encoding_format": "base64", "dimensions": 16},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    cut = np.frombuffer(raw, dtype="<f4")
    assert cut.shape == (16,)
    np.testing.assert_allclose(cut, floats[:16] / np.linalg.norm(floats[:16]), rtol=1e-5)


async def test_v1_embeddings_token_arrays_are_cl100k(
    client: httpx.AsyncClient, fake: FakeEmbeddingEngine
) -> None:
    """Token ids are OpenAI's cl100k_base (what LangChain sends), decoded and embedded as text."""
    hello, world = 15339, 1917  # cl100k_base: "hello", " world"
    r = await client.post(
        "/v1/embeddings", json={"input": [hello, world], "model": "m"}, headers=AUTH
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/embeddings", json={"input": [[hello, world], [hello]], "model": "m"}, headers=AUTH
    )
    assert r.status_code == 200
    assert len(r.json()["data"]) == 2
    assert fake.calls == [["hello world"], ["hello"]]  # the second request found one cached
    string = await client.post(
        "/v1/embeddings", json={"input": "hello world", "model": "m"}, headers=AUTH
    )
    assert string.json()["data"][0] == r.json()["data"][0]


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"input": [10**9]}, "input", "invalid_token_id"),
        ({"input": [15339, 100256]}, "input", "invalid_token_id"),
        ({"input": [[15339], [15339, -1]]}, "input[1]", "invalid_token_id"),
        # b"\xff" (id 223 in cl100k_base) between two words is no UTF-8 at all
        ({"input": [[15339], [15339, 187, 1917]]}, "input[1]", "invalid_token_sequence"),
    ],
)
async def test_v1_embeddings_undecodable_tokens(
    client: httpx.AsyncClient, fake: FakeEmbeddingEngine, payload: dict, param: str, code: str
) -> None:
    r = await client.post("/v1/embeddings", json={"model": "m", **payload}, headers=AUTH)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert "cl100k_base" in error["message"]
    assert fake.calls == []


@pytest.mark.parametrize(
    "payload",
    [
        {"input": "x", "model": "m", "dimensions": 65},
        {"input": "x", "model": "m", "dimensions": 0},
        {"input": [], "model": "m"},
        {"input": ["ok", " "], "model": "m"},
        {"input": "x", "model": "m", "encoding_format": "int4"},
        {"input": "x", "model": "m", "prompt_name": "nope"},
        {"input": [1.5], "model": "m"},
        {"model": "m"},
    ],
)
async def test_v1_embeddings_bad_requests(client: httpx.AsyncClient, payload: dict) -> None:
    r = await client.post("/v1/embeddings", json=payload, headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_v1_embeddings_prompt_extension(
    client: httpx.AsyncClient, fake: FakeEmbeddingEngine
) -> None:
    r = await client.post(
        "/v1/embeddings", json={"input": "q", "model": "m", "prompt_name": "query"}, headers=AUTH
    )
    assert r.status_code == 200
    assert fake.calls == [[GEMMA_PROMPTS["query"] + "q"]]


async def test_embedding_routes_need_the_key(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/embeddings", json={"input": "x", "model": "m"})
    assert r.status_code == 401
    r = await client.post("/embed", files={"file": ("x.txt", b"x")})
    assert r.status_code == 401


async def test_embed_bucket_rate_limits(fake: FakeEmbeddingEngine) -> None:
    from asgi_lifespan import LifespanManager

    app = create_app(
        make_settings(WORKBENCH_API_KEY=TEST_KEY, EMBED_RATE_LIMIT_CALLS=2),
        engines=Engines(embedding=fake),
    )
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            codes = [
                (await http.post("/v1/embeddings", json={"input": "x"}, headers=AUTH)).status_code
                for _ in range(3)
            ]
            r = await http.post("/embed", files={"file": ("x.txt", b"x")}, headers=AUTH)
    assert codes == [200, 200, 429]
    assert r.status_code == 429
    assert "Try again in" in r.json()["error"]["message"]


async def test_not_loaded_is_503(settings: Settings) -> None:
    from asgi_lifespan import LifespanManager

    engines = Engines()
    status = engines.capability("embeddings")
    status.status, status.reason = "error", "EMBEDDING_MODEL_PATH: nope is not a folder"
    app = create_app(settings, engines=engines)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            r = await http.post("/v1/embeddings", json={"input": "x"}, headers=AUTH)
    assert r.status_code == 503
    assert "EMBEDDING_MODEL_PATH" in r.json()["error"]["message"]
    assert r.headers["Retry-After"]


async def test_one_request_cannot_overfill_the_queue_or_the_char_budget() -> None:
    settings = make_settings(
        WORKBENCH_API_KEY=TEST_KEY,
        EMBED_RATE_LIMIT_CALLS=1000,
        EMBEDDING_QUEUE_SIZE=8,
        EMBEDDING_MAX_REQUEST_CHARS=100,
    )
    fake = FakeEmbeddingEngine(dimension=16)
    engines = Engines(embedding=fake)
    engines.capability("embeddings").status = "loaded"
    async with (
        LifespanManager(create_app(settings, engines=engines)) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t"
        ) as client,
    ):
        many = await client.post(
            "/v1/embeddings",
            json={"input": [f"t{i}" for i in range(9)], "model": "m"},
            headers=AUTH,
        )
        assert many.status_code == 400, many.text
        assert many.json()["error"]["code"] == "too_many_inputs"
        long = await client.post(
            "/v1/embeddings", json={"input": ["x" * 60, "y" * 60], "model": "m"}, headers=AUTH
        )
        assert long.status_code == 400, long.text
        assert long.json()["error"]["code"] == "input_too_large"
        assert fake.texts_encoded == 0
        ok = await client.post(
            "/v1/embeddings",
            json={"input": [f"t{i}" for i in range(8)], "model": "m"},
            headers=AUTH,
        )
        assert ok.status_code == 200, ok.text
