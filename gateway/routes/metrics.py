"""GET /metrics in Prometheus text format (see docs/metrics.md); who may read it: dashboard/guard.py."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.dashboard.guard import require_metrics_access
from gateway.deps import MetricsDep

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_metrics_access)])


@router.get("/metrics", response_class=Response)
async def metrics(gateway_metrics: MetricsDep) -> Response:
    return Response(gateway_metrics.render(), media_type=CONTENT_TYPE_LATEST)
