"""``GET /metrics``: Prometheus text format. Public by default; ``METRICS_REQUIRE_KEY`` puts it
behind the key (``app.py`` decides when mounting)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter(tags=["service"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.egemma.metrics.render(), media_type=CONTENT_TYPE_LATEST)
