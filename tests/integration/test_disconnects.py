"""Clients that leave, and overload, on a real Hypercorn with a slow fake model (reliability.md §1,
§3): every way of leaving frees the slot at once and stops generation; a full queue is 503 +
Retry-After; a failure mid-stream ends in ``response.failed``; the next request is served."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from egemma.app import create_app
from egemma.runtime import Engines
from egemma.settings import Settings
from tests.conftest import AUTH, TEST_KEY, make_settings
from tests.fakes.chat import FakeChatEngine, fake_engines
from tests.servers import LiveServer

DELAY = 0.01  # seconds per fake token
LONG = "tok " * 2000  # ~20 s of tokens: never finishes on its own within a test


@pytest.fixture
def settings() -> Settings:
    return make_settings(
        WORKBENCH_API_KEY=TEST_KEY, CHAT_RATE_LIMIT_CALLS=1_000_000, CHAT_QUEUE_SIZE=2
    )


@pytest.fixture
def slow() -> FakeChatEngine:
    return FakeChatEngine("slow", script=LONG, delay=DELAY, queue_size=2)


@pytest.fixture
def full() -> FakeChatEngine:
    return FakeChatEngine("full", script=LONG, delay=DELAY, queue_size=0)


@pytest.fixture
def broken() -> FakeChatEngine:
    return FakeChatEngine("broken", script=LONG, delay=DELAY, fail_after=3)


@pytest.fixture
def quick() -> FakeChatEngine:
    return FakeChatEngine("quick")


@pytest.fixture
def engines(
    slow: FakeChatEngine, full: FakeChatEngine, broken: FakeChatEngine, quick: FakeChatEngine
) -> Engines:
    return fake_engines(slow, full, broken, quick)


def wait_until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def idle(engine: FakeChatEngine) -> bool:
    return (
        not engine.admission_stats().busy
        and engine.admission_stats().depth == 0
        and engine.running == 0
    )


def assert_stopped(engine: FakeChatEngine) -> None:
    """The slot is free, generation stopped and stays stopped."""
    wait_until(lambda: idle(engine))
    tokens = engine.tokens_generated
    time.sleep(DELAY * 5)
    assert engine.tokens_generated == tokens
    assert engine.running == 0


def raw_request(server: LiveServer, model: str, stream: bool = True) -> socket.socket:
    body = json.dumps({"model": model, "input": "hi", "stream": stream})
    head = (
        "POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TEST_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall((head + body).encode())
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        chunk = sock.recv(65536)
        if not chunk:
            break
        seen += chunk
    return seen


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def events(lines: Iterator[str]) -> Iterator[dict[str, object]]:
    for line in lines:
        if line.startswith("data: "):
            yield json.loads(line[6:])


def served(server: LiveServer) -> None:
    resp = httpx.post(
        f"{server.base_url}/v1/responses",
        json={"model": "quick", "input": "hi"},
        headers=AUTH,
        timeout=30,
    )
    assert resp.status_code == 200
    assert resp.json()["status"] == "completed"


def test_abandon_after_some_events(live_server: LiveServer, slow: FakeChatEngine) -> None:
    with (
        httpx.Client(base_url=live_server.base_url, headers=AUTH, timeout=30) as http,
        http.stream(
            "POST", "/v1/responses", json={"model": "slow", "input": "hi", "stream": True}
        ) as resp,
    ):
        assert resp.status_code == 200
        for n, _ in enumerate(events(resp.iter_lines())):
            if n == 5:
                break
    assert_stopped(slow)
    assert slow.cancelled == 1
    served(live_server)
    metrics = httpx.get(f"{live_server.base_url}/metrics").text
    assert 'egemma_client_disconnects_total{stage="generating"} 1.0' in metrics


@pytest.mark.parametrize("close", [socket.socket.close, reset], ids=["fin", "rst"])
def test_abandon_before_the_first_byte(
    live_server: LiveServer, slow: FakeChatEngine, close: Callable[[socket.socket], None]
) -> None:
    sock = raw_request(live_server, "slow")
    close(sock)
    wait_until(lambda: slow.admission_stats().admitted == 1 or idle(slow))
    assert_stopped(slow)
    served(live_server)


def test_abandon_while_queued(live_server: LiveServer, slow: FakeChatEngine) -> None:
    holder = raw_request(live_server, "slow")
    read_until(holder, b"data: ")
    waiter = raw_request(live_server, "slow")
    wait_until(lambda: slow.admission_stats().depth == 1)
    waiter.close()
    wait_until(lambda: slow.admission_stats().depth == 0)
    assert slow.admission_stats().abandoned == 1
    assert slow.admission_stats().busy  # the holder still streams
    holder.close()
    assert_stopped(slow)
    assert slow.generations == 1  # the waiter never generated
    metrics = httpx.get(f"{live_server.base_url}/metrics").text
    assert 'egemma_client_disconnects_total{stage="queued"} 1.0' in metrics


def test_queue_full_is_503_with_retry_after(live_server: LiveServer, full: FakeChatEngine) -> None:
    holder = raw_request(live_server, "full")
    read_until(holder, b"data: ")
    try:
        for stream in (True, False):
            resp = httpx.post(
                f"{live_server.base_url}/v1/responses",
                json={"model": "full", "input": "hi", "stream": stream},
                headers=AUTH,
                timeout=10,
            )
            assert resp.status_code == 503
            assert int(resp.headers["retry-after"]) >= 1
            assert resp.json()["error"]["code"] == "server_busy"
    finally:
        holder.close()
    assert_stopped(full)
    assert full.admission_stats().rejected == 2


def test_failure_mid_stream_ends_with_response_failed(
    live_server: LiveServer, broken: FakeChatEngine
) -> None:
    with httpx.Client(base_url=live_server.base_url, headers=AUTH, timeout=30) as http:
        body = {"model": "broken", "input": "hi", "stream": True}
        with http.stream("POST", "/v1/responses", json=body) as resp:
            seen = list(events(resp.iter_lines()))
    assert seen[-1]["type"] == "response.failed"
    assert [e["sequence_number"] for e in seen] == list(range(len(seen)))
    wait_until(lambda: idle(broken))
    served(live_server)


@pytest.mark.slow
def test_a_thousand_aborted_streams_leak_nothing(
    live_server: LiveServer, slow: FakeChatEngine
) -> None:
    slow.delay = 0.001
    for i in range(1000):
        sock = raw_request(live_server, "slow")
        read_until(sock, b"data: ")
        if i % 2:
            reset(sock)
        else:
            sock.close()
    assert_stopped(slow)
    assert slow.admission_stats().admitted == 1000
    assert slow.generations <= 1000
    served(live_server)


def test_a_burst_gets_only_200_or_503(live_server: LiveServer, slow: FakeChatEngine) -> None:
    """Overload is capacity (503 + Retry-After), never another 5xx, and leaves nothing behind."""
    slow.script, slow.delay = "tok " * 20, 0.002

    def call(i: int) -> httpx.Response:
        return httpx.post(
            f"{live_server.base_url}/v1/responses",
            json={"model": "slow", "input": "hi", "stream": i % 2 == 0},
            headers=AUTH,
            timeout=30,
        )

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(call, range(48)))
    statuses = {r.status_code for r in answers}
    assert statuses <= {200, 503}
    assert 200 in statuses
    for resp in answers:
        if resp.status_code == 503:
            assert int(resp.headers["retry-after"]) >= 1
    wait_until(lambda: idle(slow))
    served(live_server)


def test_rate_limit_counts_a_stream_once_and_ignores_forwarded_for() -> None:
    settings = make_settings(WORKBENCH_API_KEY=TEST_KEY, CHAT_RATE_LIMIT_CALLS=2)
    server = LiveServer(create_app(settings, engines=fake_engines(FakeChatEngine("quick"))))
    server.start()
    try:
        with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=30) as http:
            body = {"input": "hi", "stream": True}
            with http.stream("POST", "/v1/responses", json=body) as resp:
                assert sum(1 for _ in events(resp.iter_lines())) > 5  # many events, one call
            assert http.post("/v1/responses", json={"input": "hi"}).status_code == 200
            for forwarded in (None, "203.0.113.7", "198.51.100.1, 10.0.0.1"):
                headers = {"X-Forwarded-For": forwarded} if forwarded else {}
                over = http.post("/v1/responses", json={"input": "hi"}, headers=headers)
                assert over.status_code == 429
                assert int(over.headers["retry-after"]) >= 1
                assert "Rate limit exceeded. Try again in" in over.json()["error"]["message"]
    finally:
        server.stop()


@pytest.fixture
def flood() -> FakeChatEngine:
    """Fast, long, wide: fills any socket buffer in a moment."""
    script = ("x" * 2000 + " ") * 20_000
    return FakeChatEngine("flood", script=script, delay=0.001, queue_size=2, n_ctx=200_000)


def test_a_client_that_stops_reading_loses_its_slot(flood: FakeChatEngine) -> None:
    settings = make_settings(
        WORKBENCH_API_KEY=TEST_KEY, CHAT_RATE_LIMIT_CALLS=1_000_000, STREAM_WRITE_TIMEOUT=1
    )
    server = LiveServer(create_app(settings, engines=fake_engines(flood, FakeChatEngine("quick"))))
    server.start()
    try:
        request = {"model": "flood", "input": "hi", "stream": True, "max_output_tokens": 150_000}
        body = json.dumps(request)
        head = (
            "POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {TEST_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall((head + body).encode())
        # Never read; keep the socket open. The write deadline must end the generation.
        wait_until(lambda: flood.cancelled == 1, seconds=60)
        wait_until(lambda: idle(flood))
        assert flood.tokens_generated < 20_000  # stopped, did not run to the end
        served(server)
        sock.close()
    finally:
        server.stop()


def test_a_summary_stops_when_its_client_leaves() -> None:
    """Non-streamed work has nobody writing to the client: a watcher notices it left."""
    slow = FakeChatEngine("slow", script=LONG, delay=DELAY, n_ctx=8192)
    settings = make_settings(WORKBENCH_API_KEY=TEST_KEY, SUMMARIZE_RATE_LIMIT_CALLS=1000)
    server = LiveServer(create_app(settings, engines=fake_engines(slow, summary=True)))
    server.start()
    try:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(
                f"{server.base_url}/summarize",
                files={"file": ("a.py", b"def f():\n    return 1\n")},
                data={"max_tokens": "4000"},
                headers=AUTH,
                timeout=1.0,
            )
        wait_until(lambda: slow.cancelled == 1, seconds=30)
        assert_stopped(slow)
        assert slow.tokens_generated < 2000
    finally:
        server.stop()


def test_embeddings_stop_when_their_client_leaves() -> None:
    """Texts still queued when the client gives up are never encoded."""
    from tests.fakes.embeddings import FakeEmbeddingEngine

    fake = FakeEmbeddingEngine(dimension=16, delay=0.05)
    engines = fake_engines(FakeChatEngine("quick"))
    engines.embedding = fake
    engines.capability("embeddings").status = "loaded"
    settings = make_settings(
        WORKBENCH_API_KEY=TEST_KEY, EMBED_RATE_LIMIT_CALLS=1000, EMBEDDING_MAX_BATCH_SIZE=4
    )
    server = LiveServer(create_app(settings, engines=engines))
    server.start()
    try:
        texts = [f"text {i}" for i in range(1000)]  # 250 batches of 50 ms: 12 s of work
        with pytest.raises(httpx.TimeoutException):
            httpx.post(
                f"{server.base_url}/v1/embeddings",
                json={"input": texts, "model": "m"},
                headers=AUTH,
                timeout=1.0,
            )
        wait_until(lambda: fake.texts_encoded > 0)
        time.sleep(2)  # the watcher polls every half second; one batch may still finish
        settled = fake.texts_encoded
        time.sleep(1)
        assert fake.texts_encoded == settled
        assert settled < len(texts)
    finally:
        server.stop()
