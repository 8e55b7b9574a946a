"""The app factory: wires settings, the loaded models, middleware, error handlers and routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import __version__
from gateway.errors import install_error_handlers
from gateway.metrics import GatewayMetrics
from gateway.middleware import TandemHeadersMiddleware
from gateway.registry import ModelRegistry
from gateway.routes import chat, completions, health, models, ollama, ollama_models
from gateway.routes import metrics as metrics_route
from gateway.settings import Settings


def create_app(settings: Settings, registry: ModelRegistry) -> FastAPI:
    """`registry` is loaded by the caller, so a bad model fails before the server listens."""

    metrics = GatewayMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.registry = registry
        app.state.metrics = metrics
        try:
            yield
        finally:
            await registry.aclose()

    app = FastAPI(title="tandem", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(TandemHeadersMiddleware, max_request_bytes=settings.max_request_bytes, metrics=metrics)
    for module in (health, metrics_route, models, chat, completions, ollama, ollama_models):
        app.include_router(module.router)
    return app
