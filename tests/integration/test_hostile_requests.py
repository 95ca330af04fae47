"""Requests built to break the server (issue 18): lone surrogates anywhere in a JSON body,
deeply nested call arguments, ambiguous framing, bodies that never finish. Each is a 4xx in
OpenAI's shape, nothing is stored, and the server keeps serving."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from egemma.runtime import Engines
from egemma.settings import Settings
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.chat import FakeChatEngine, fake_engines
from tests.fakes.embeddings import FakeEmbeddingEngine
from tests.servers import LiveServer

pytestmark = pytest.mark.anyio

LONE = "\ud800"


@pytest.fixture
def settings() -> Settings:
    return make_settings(
        WORKBENCH_API_KEY=TEST_KEY,
        CHAT_RATE_LIMIT_CALLS=100_000,
        CONVERSATION_RATE_LIMIT_CALLS=100_000,
        EMBED_RATE_LIMIT_CALLS=100_000,
        REQUEST_BODY_TIMEOUT=1,
    )


@pytest.fixture
def engines() -> Engines:
    engines = fake_engines(FakeChatEngine("fake"))
    engines.embedding = FakeEmbeddingEngine(dimension=16)
    engines.capability("embeddings").status = "loaded"
    return engines


def _raw(body: dict[str, Any]) -> bytes:
    """JSON as a client would send it: ``ensure_ascii`` escapes the surrogate as ``\\ud800``."""
    return json.dumps(body).encode()


SURROGATE_BODIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "instructions": ("POST", "/v1/responses", {"input": "hi", "instructions": LONE}),
    "metadata": ("POST", "/v1/responses", {"input": "hi", "metadata": {"k": LONE}}),
    "metadata key": ("POST", "/v1/responses", {"input": "hi", "metadata": {LONE: "v"}}),
    "stored input": ("POST", "/v1/responses", {"input": f"a{LONE}b"}),
    "conversation id": ("POST", "/v1/responses", {"input": "hi", "conversation": LONE}),
    "conversation metadata": ("POST", "/v1/conversations", {"metadata": {"k": LONE}}),
    "conversation items": (
        "POST",
        "/v1/conversations",
        {"items": [{"role": "user", "content": LONE}]},
    ),
    "embeddings input": ("POST", "/v1/embeddings", {"input": [LONE]}),
    "chat message": (
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": LONE}]},
    ),
    "low half alone": ("POST", "/v1/responses", {"input": "\udc00"}),
    "reversed pair": ("POST", "/v1/responses", {"input": "\ude00\ud83d"}),
}


@pytest.mark.parametrize(
    ("method", "path", "body"), SURROGATE_BODIES.values(), ids=SURROGATE_BODIES.keys()
)
async def test_lone_surrogates_are_400(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any]
) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    resp = await client.request(method, path, content=_raw(body), headers=headers)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_unicode"
    listed = await client.get("/v1/conversations", headers=AUTH)
    assert listed.status_code < 500


async def test_a_surrogate_pair_is_an_emoji_and_welcome(client: httpx.AsyncClient) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    body = _raw({"input": "smile \U0001f600", "metadata": {"face": "\U0001f600"}})
    assert b"\\ud83d\\ude00" in body
    resp = await client.post("/v1/responses", content=body, headers=headers)
    assert resp.status_code == 200, resp.text
    stored = await client.get(f"/v1/responses/{resp.json()['id']}", headers=AUTH)
    assert stored.json()["metadata"] == {"face": "\U0001f600"}


def _nested_call(depth: int) -> dict[str, Any]:
    arguments = "[" * depth + "]" * depth
    return {
        "input": [
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": arguments},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ],
        "tools": [{"type": "function", "name": "f"}],
    }


async def test_deeply_nested_arguments_are_400(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/responses", json=_nested_call(5000), headers=AUTH)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "arguments_too_deep"
    chat = {
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{" * 5000},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        ]
    }
    resp = await client.post("/v1/chat/completions", json=chat, headers=AUTH)
    assert resp.status_code == 400, resp.text
    ok = await client.post("/v1/responses", json=_nested_call(10), headers=AUTH)
    assert ok.status_code == 200, ok.text


def _send_raw(server: LiveServer, request: bytes, wait: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_content_length_with_transfer_encoding_is_400(live_server: LiveServer) -> None:
    body = b'{"input":"hi"}'
    request = (
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {TEST_KEY}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    reply = _send_raw(live_server, request)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b'"invalid_framing"' in reply


def test_a_body_that_never_finishes_is_408(live_server: LiveServer) -> None:
    request = (
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {TEST_KEY}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        + b'{"input": "'
    )
    reply = _send_raw(live_server, request, wait=30)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"request_timeout"' in reply
    health = httpx.get(f"{live_server.base_url}/health", timeout=5)
    assert health.status_code == 200


async def test_multipart_without_its_closing_boundary_is_400(client: httpx.AsyncClient) -> None:
    boundary = "XyZ123"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="language"\r\n\r\npython\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="a.py"\r\n'
        "Content-Type: text/x-python\r\n\r\ndef f():\n    return 1\n"
    ).encode()
    headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    cut = await client.post("/parse-ast", content=body, headers=headers)
    assert cut.status_code == 400, cut.text
    assert cut.json()["error"]["code"] == "truncated_body"
    whole = body + f"\r\n--{boundary}--\r\n".encode()
    ok = await client.post("/parse-ast", content=whole, headers=headers)
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "invalid_http"),
    ],
    ids=["huge-headers", "garbage"],
)
def test_hypercorns_own_errors_are_in_openai_shape(
    live_server: LiveServer, request_bytes: bytes, status: int, code: str
) -> None:
    reply = _send_raw(live_server, request_bytes)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), head
    assert json.loads(body)["error"]["code"] == code
    assert httpx.get(f"{live_server.base_url}/health", timeout=5).status_code == 200
