"""GET /metrics in Prometheus text format (see docs/metrics.md)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(gateway_metrics: MetricsDep) -> Response:
    return Response(gateway_metrics.render(), media_type=CONTENT_TYPE_LATEST)
