"""The HTTP surface: one router per module. API routers need a caller (an API key once access is on)."""

from gateway import dashboard
from gateway.routes import (
    chat,
    completions,
    embeddings,
    health,
    metrics,
    models,
    ollama,
    ollama_manage,
    ollama_models,
    ollama_pull,
)

OPEN_ROUTERS = [health.router, metrics.router, dashboard.router]
API_ROUTERS = [
    r.router
    for r in (models, chat, completions, embeddings, ollama, ollama_models, ollama_manage, ollama_pull)
]
