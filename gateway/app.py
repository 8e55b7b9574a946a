"""The app factory: wires settings, the loaded models, middleware, error handlers and routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import __version__, routes
from gateway.errors import install_error_handlers
from gateway.metrics import GatewayMetrics
from gateway.middleware import TandemHeadersMiddleware
from gateway.model_store import ModelStore
from gateway.registry import ModelManager
from gateway.settings import Settings


def create_app(settings: Settings, models: ModelManager, store: ModelStore) -> FastAPI:
    """`models` is built by the caller, so a bad config or model file fails before the server listens."""
    metrics = GatewayMetrics(models)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.models = models
        app.state.metrics = metrics
        app.state.store = store
        await models.start()  # preloads the models that ask for it
        try:
            yield
        finally:
            await models.aclose()

    app = FastAPI(title="tandem", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(TandemHeadersMiddleware, max_request_bytes=settings.max_request_bytes, metrics=metrics)
    for router in routes.ROUTERS:
        app.include_router(router)
    return app
