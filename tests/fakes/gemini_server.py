"""A local HTTP server that answers like the Gemini ``generateContent`` endpoint.

The real ``google-genai`` SDK talks to it through ``GEMINI_BASE_URL``. Tests script the answers
(success, 429 with ``RetryInfo``, 503, a blocked prompt, no candidates) and read back every
request the SDK sent (path, headers, JSON body).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def success(text: str = "A fake Gemini summary.", model: str = "gemini-2.5-flash") -> Reply:
    return Reply(
        body={
            "candidates": [
                {
                    "content": {"parts": [{"text": text}], "role": "model"},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 42,
                "candidatesTokenCount": 7,
                "totalTokenCount": 49,
            },
            "modelVersion": model,
        }
    )


def quota(retry_delay: str | None = "38s") -> Reply:
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generate_content_free_tier_requests"}],
        }
    ]
    if retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        )
    return Reply(
        status=429,
        body={
            "error": {
                "code": 429,
                "message": "You exceeded your current quota, please check your plan.",
                "status": "RESOURCE_EXHAUSTED",
                "details": details,
            }
        },
    )


def overloaded() -> Reply:
    return Reply(
        status=503,
        body={
            "error": {
                "code": 503,
                "message": "The model is overloaded. Please try again later.",
                "status": "UNAVAILABLE",
            }
        },
    )


def prompt_blocked() -> Reply:
    return Reply(
        body={
            "promptFeedback": {
                "blockReason": "SAFETY",
                "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}],
            },
            "modelVersion": "gemini-2.5-flash",
        }
    )


def no_candidates() -> Reply:
    return Reply(body={"candidates": [], "modelVersion": "gemini-2.5-flash"})


def finish_safety() -> Reply:
    return Reply(body={"candidates": [{"finishReason": "SAFETY", "index": 0}], "modelVersion": "x"})


def bad_request() -> Reply:
    return Reply(
        status=400,
        body={
            "error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
            }
        },
    )


class FakeGemini:
    """``with FakeGemini() as fake``: ``fake.base_url`` for ``GEMINI_BASE_URL``."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                with fake._lock:
                    fake.received.append(
                        Received(self.path, dict(self.headers.items()), json.loads(raw or b"{}"))
                    )
                    reply = fake.replies.popleft() if fake.replies else success()
                if reply.delay:
                    threading.Event().wait(reply.delay)
                payload = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def __enter__(self) -> FakeGemini:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
