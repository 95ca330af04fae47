"""One log line and the HTTP metrics per request, as pure ASGI middleware.

The line is logfmt on the ``egemma.access`` logger: method, route template, status, duration,
request id, body sizes. Never a header (the key), never the query string (``?api_key=``), never a
body — unless ``LOG_PROMPTS`` is on, when the first KiB of a request body is logged at DEBUG on
``egemma.prompts``. The route label is the matched route's template, not the raw path, so the
metric's cardinality stays bounded whatever clients send.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from egemma.metrics import Metrics

log = logging.getLogger("egemma.access")
prompt_log = logging.getLogger("egemma.prompts")

UNMATCHED = "<unmatched>"
PROMPT_PREVIEW_BYTES = 1024


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class ObserveMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, log_prompts: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.log_prompts = log_prompts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        sizes = {"in": 0, "out": 0}
        status = 0
        preview = bytearray()

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                sizes["in"] += len(body)
                if self.log_prompts and len(preview) < PROMPT_PREVIEW_BYTES:
                    preview.extend(body[: PROMPT_PREVIEW_BYTES - len(preview)])
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sizes["out"] += len(message.get("body", b""))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, counting_receive, counting_send)
        except BaseException:
            status = status or 500
            raise
        finally:
            self.metrics.in_flight.dec()
            self._record(scope, status or 500, time.perf_counter() - start, sizes, preview)

    def _record(
        self,
        scope: Scope,
        status: int,
        seconds: float,
        sizes: dict[str, int],
        preview: bytearray,
    ) -> None:
        method = str(scope.get("method", ""))
        route = route_template(scope)
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(method, route, str(status)).observe(seconds)
        state: dict[str, Any] = scope.get("state") or {}
        fields = {
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": f"{seconds * 1000:.1f}",
            "request_id": state.get("request_id", "-"),
            "bytes_in": sizes["in"],
            "bytes_out": sizes["out"],
        }
        level = logging.WARNING if status >= 500 and status != 503 else logging.INFO
        log.log(level, " ".join(f"{k}={v}" for k, v in fields.items()), extra={"http": fields})
        if preview and prompt_log.isEnabledFor(logging.DEBUG):
            text = bytes(preview).decode("utf-8", "replace")
            prompt_log.debug("request_id=%s body=%r", fields["request_id"], text)
