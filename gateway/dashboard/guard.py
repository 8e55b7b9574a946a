"""Who may read the metrics pages: everyone, unless `metrics_require_key` is on and access control is."""

from __future__ import annotations

from fastapi import Request

from gateway.deps import get_principal
from gateway.errors import APIError


async def require_metrics_access(request: Request) -> None:
    """The check GET /metrics makes, as a dependency: with TANDEM_METRICS_REQUIRE_KEY and a master key
    configured, only the master key may read (401 without a valid key, 403 with another key)."""
    settings = request.app.state.settings
    if settings.metrics_require_key and request.app.state.access.enabled:
        principal = await get_principal(request)
        if not principal.is_master:
            raise APIError(403, f"{request.url.path} needs the master key", code="insufficient_permissions")
