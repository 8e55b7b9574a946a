"""The HTTP surface: one router per module."""

from gateway.routes import chat, completions, health, metrics, models, ollama, ollama_models

ROUTERS = [r.router for r in (health, metrics, models, chat, completions, ollama, ollama_models)]
