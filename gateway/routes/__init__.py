"""The HTTP surface: one router per module. API routers need a caller (an API key once access is on)."""

from gateway import dashboard
from gateway.routes import (
    adapters,
    chat,
    completions,
    embeddings,
    health,
    messages,
    metrics,
    models,
    ollama,
    ollama_manage,
    ollama_models,
    ollama_pull,
    responses,
    tokenize,
)

OPEN_ROUTERS = [health.router, metrics.router, dashboard.router]
ADMIN_ROUTERS = [adapters.router]  # guarded by the master key themselves, as gateway.auth's admin_router
API_ROUTERS = [
    r.router
    for r in (
        models,
        chat,
        responses,
        messages,
        completions,
        embeddings,
        ollama,
        ollama_models,
        ollama_manage,
        ollama_pull,
        tokenize,
    )
]
