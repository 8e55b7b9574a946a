"""The HTTP surface: one router per module."""

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
)

ROUTERS = [
    r.router
    for r in (health, metrics, models, chat, completions, embeddings, ollama, ollama_models, ollama_manage)
]
