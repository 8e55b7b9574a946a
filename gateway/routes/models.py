"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.deps import RegistryDep, resolve_model
from gateway.openai_protocol import ModelCard, ModelList
from gateway.registry import ServedModel

router = APIRouter(prefix="/v1", tags=["models"])


def _card(model: ServedModel) -> ModelCard:
    return ModelCard(
        id=model.spec.name,
        created=model.created,
        backend=model.backend.kind,
        aliases=model.spec.aliases,
        context_length=model.backend.context_length,
    )


@router.get("/models")
async def list_models(registry: RegistryDep) -> ModelList:
    return ModelList(data=[_card(model) for model in registry])


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, registry: RegistryDep, request: Request) -> ModelCard:
    return _card(resolve_model(registry, model_id, request))
