"""GET /v1/models and /v1/models/{id}: every configured model, loaded or not."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.deps import ModelsDep, may_see, resolve_model
from gateway.openai_protocol import ModelCard, ModelList
from gateway.registry import ManagedModel

router = APIRouter(prefix="/v1", tags=["models"])


def _card(model: ManagedModel) -> ModelCard:
    return ModelCard(
        id=model.spec.name,
        created=model.created,
        backend=model.spec.backend,
        aliases=model.spec.aliases,
        context_length=model.context_length,
        state=model.state.value,
    )


@router.get("/models")
async def list_models(models: ModelsDep, request: Request) -> ModelList:
    return ModelList(data=[_card(model) for model in models if may_see(request, model)])


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, models: ModelsDep, request: Request) -> ModelCard:
    return _card(resolve_model(models, model_id, request))
