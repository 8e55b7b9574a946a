"""The app factory: wires settings, the loaded models, middleware, error handlers and routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from gateway import __version__, routes
from gateway.auth import Access, admin_router
from gateway.deps import get_principal
from gateway.errors import install_error_handlers
from gateway.metrics import GatewayMetrics
from gateway.middleware import TandemHeadersMiddleware
from gateway.model_store import ModelStore
from gateway.registry import ModelManager
from gateway.response_store import open_response_store
from gateway.routing import Router
from gateway.settings import Settings


def create_app(
    settings: Settings, models: ModelManager, router: Router, store: ModelStore, access: Access
) -> FastAPI:
    """`models` and `access` are built by the caller, so a bad config or model file fails before the server
    listens; the app owns them from then on and closes them at shutdown."""
    metrics = GatewayMetrics(models)
    access.on_rejected = lambda team, limit: metrics.rate_limit_rejections.labels(team, limit).inc()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.models = models
        app.state.metrics = metrics
        app.state.store = store
        app.state.access = access
        app.state.router = router
        # stored responses (/v1/responses) live where the keys do: Redis when configured, else memory
        app.state.responses = open_response_store(access.settings, settings.responses_retention_s)
        await models.start()  # preloads the models that ask for it
        try:
            yield
        finally:
            await models.aclose()
            await router.aclose()
            await access.aclose()
            await app.state.responses.aclose()

    app = FastAPI(title="tandem", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(TandemHeadersMiddleware, max_request_bytes=settings.max_request_bytes, metrics=metrics)
    for open_routes in routes.OPEN_ROUTERS:
        app.include_router(open_routes)
    for api_routes in routes.API_ROUTERS:
        app.include_router(api_routes, dependencies=[Depends(get_principal)])
    app.include_router(admin_router)  # guarded by the master key itself
    for admin_routes in routes.ADMIN_ROUTERS:
        app.include_router(admin_routes)
    return app
