"""GET /metrics in Prometheus text format (see docs/metrics.md)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.deps import MetricsDep, SettingsDep, get_principal
from gateway.errors import APIError

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(gateway_metrics: MetricsDep, settings: SettingsDep, request: Request) -> Response:
    if settings.metrics_require_key and request.app.state.access.enabled:
        principal = await get_principal(request)
        if not principal.is_master:
            raise APIError(403, "/metrics needs the master key", code="insufficient_permissions")
    return Response(gateway_metrics.render(), media_type=CONTENT_TYPE_LATEST)
