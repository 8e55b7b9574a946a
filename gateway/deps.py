"""Typed dependencies: what routes get injected, built once in the app's lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.errors import model_not_found
from gateway.metrics import GatewayMetrics
from gateway.model_store import ModelStore
from gateway.registry import ManagedModel, ModelManager
from gateway.settings import Settings


def get_models(request: Request) -> ModelManager:
    return request.app.state.models


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


ModelsDep = Annotated[ModelManager, Depends(get_models)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
StoreDep = Annotated[ModelStore, Depends(get_store)]


def record_model(request: Request, model: ManagedModel) -> None:
    """Which model and backend served the request: the x-tandem-backend header and the metrics' labels."""
    request.state.tandem_backend = model.spec.backend
    request.state.tandem_model = model.spec.name


def resolve_model(models: ModelManager, name: str, request: Request) -> ManagedModel:
    """The model a request names (name or alias), loaded or not."""
    model = models.resolve(name)
    if model is None:
        raise model_not_found(name)
    record_model(request, model)
    return model
