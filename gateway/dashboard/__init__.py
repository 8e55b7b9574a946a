"""GET /dashboard: tandem's own status page, drawn from the same registry that GET /metrics exports."""

from gateway.dashboard.routes import router

__all__ = ["router"]
