"""Who may read the metrics pages (/metrics, /dashboard, /dashboard.json).

They show every team's traffic and every model's name, beyond what any one key's allow-list lets it see,
so with access control on they need the master key: 401 without a valid key, 403 with any other key. A
Prometheus that cannot send credentials is served with TANDEM_METRICS_OPEN=true. Without access control
everything is open anyway.
"""

from __future__ import annotations

from fastapi import Request

from gateway.deps import get_principal
from gateway.errors import APIError


async def require_metrics_access(request: Request) -> None:
    state = request.app.state
    if state.settings.metrics_open or not state.access.enabled:
        return
    principal = await get_principal(request)
    if not principal.is_master:
        raise APIError(
            403,
            f"{request.url.path} needs the master key: it shows every team's traffic "
            "(TANDEM_METRICS_OPEN=true serves it without a key)",
            code="insufficient_permissions",
        )
