"""Typed dependencies: what routes get injected, built once in the app's lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.errors import model_not_found
from gateway.metrics import GatewayMetrics
from gateway.registry import ModelRegistry, ServedModel
from gateway.settings import Settings


def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def resolve_model(registry: ModelRegistry, name: str, request: Request) -> ServedModel:
    """The model a request names (name or alias); records its backend for the x-tandem-backend header."""
    model = registry.resolve(name)
    if model is None:
        raise model_not_found(name)
    request.state.tandem_backend = model.backend.kind
    request.state.tandem_model = model.spec.name
    return model
