"""GET /v1/models and /v1/models/{id}: every model a client may name, loaded or not, local or remote."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from gateway.config import ModelSpec
from gateway.deps import CallDep, may_see_names, usable_names
from gateway.errors import model_not_found
from gateway.openai_protocol import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"])
ROUTE_BACKEND = "router"  # what /v1/models says of an entry that routes to other models


def _card(call: CallDep, spec: ModelSpec) -> ModelCard:
    local = call.models.resolve(spec.name) if spec.backend in ("llamacpp", "paged") else None
    parent = local.base.spec.name if local is not None and local.base is not None else None
    return ModelCard(
        id=spec.name,
        created=local.created if local is not None else int(time.time()),
        backend=spec.backend or ROUTE_BACKEND,
        aliases=spec.aliases,
        context_length=local.context_length if local is not None else spec.context_length,
        state=local.state.value if local is not None else "loaded",
        root=parent or spec.name,
        parent=parent,
    )


@router.get("/models")
async def list_models(call: CallDep, request: Request) -> ModelList:
    visible = [s for s in call.router.entries() if may_see_names(request, [s.name, *s.aliases])]
    return ModelList(data=[_card(call, spec) for spec in visible])


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, call: CallDep, request: Request) -> ModelCard:
    spec = call.router.lookup(model_id, call.principal.team)
    if spec is None or not may_see_names(request, [model_id, spec.name, *spec.aliases]):
        raise model_not_found(model_id, usable_names(request, call.router))
    request.state.tandem_model = spec.name
    request.state.tandem_backend = spec.backend or ROUTE_BACKEND
    return _card(call, spec)
