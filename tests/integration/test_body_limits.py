"""Body caps on a real Hypercorn (reliability.md §2): ``Content-Length`` over the limit, a chunked
body that grows past it (also in 1-byte chunks), a body exactly at the limit, and a lying
``Content-Length``. Each gets its 4xx and the server keeps serving."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from egemma.settings import Settings
from tests.conftest import TEST_KEY, make_settings
from tests.servers import LiveServer

LIMIT = 4096
AUTH = {"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"}


@pytest.fixture
def settings() -> Settings:
    return make_settings(
        WORKBENCH_API_KEY=TEST_KEY,
        MAX_REQUEST_BODY_BYTES=LIMIT,
        CONVERSATION_RATE_LIMIT_CALLS=100_000,
    )


def _body(size: int) -> bytes:
    """A valid conversation-create body of exactly ``size`` bytes."""
    base = json.dumps({"metadata": {"k": ""}}).encode()
    return base + b" " * (size - len(base))


def _check_413(resp: httpx.Response) -> None:
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_body_at_the_limit_is_accepted(live_server: LiveServer) -> None:
    resp = httpx.post(
        f"{live_server.base_url}/v1/conversations", content=_body(LIMIT), headers=AUTH
    )
    assert resp.status_code == 200


def test_content_length_over_the_limit_is_413(live_server: LiveServer) -> None:
    resp = httpx.post(
        f"{live_server.base_url}/v1/conversations", content=_body(LIMIT + 1), headers=AUTH
    )
    _check_413(resp)


@pytest.mark.parametrize("chunk", [1024, 1], ids=["1KiB-chunks", "1-byte-chunks"])
def test_chunked_body_over_the_limit_is_413(live_server: LiveServer, chunk: int) -> None:
    with httpx.Client(base_url=live_server.base_url, headers=AUTH, timeout=30) as http:
        body = _body(LIMIT + 512 if chunk == 1 else LIMIT * 4)
        resp = http.post("/v1/conversations", content=_chunks(body, chunk))
        assert "content-length" not in resp.request.headers
        _check_413(resp)
        assert http.get("/v1/conversations", headers=AUTH).status_code == 200


def test_lying_content_length_is_4xx(live_server: LiveServer) -> None:
    body = _body(200)
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
        sock.sendall(
            (
                "POST /v1/conversations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {TEST_KEY}\r\nContent-Type: application/json\r\n"
                "Content-Length: 10\r\nConnection: close\r\n\r\n"
            ).encode()
            + body
        )
        status = int(sock.recv(65536).split(b" ", 2)[1])
    assert 400 <= status < 500
    assert httpx.get(f"{live_server.base_url}/health").status_code == 200
