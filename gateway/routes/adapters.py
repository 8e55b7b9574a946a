"""The admin API for LoRA adapters (master key): list, add and remove a model's adapters at run time, without
reloading the model. An added adapter is a model name of its own at once, and persists across restarts."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from gateway.adapter_admin import adapter_base, install_adapter, remove_adapter
from gateway.adapter_models import AdapterModel
from gateway.auth.admin import AdminAccess
from gateway.config import AdapterSpec
from gateway.deps import ModelsDep, StoreDep
from gateway.errors import APIError

router = APIRouter(prefix="/admin", tags=["admin"])


class AdapterInfo(BaseModel):
    name: str  # the model name clients send
    base: str  # the model whose backend runs it
    path: str
    scale: float
    source: Literal["config", "created"]  # config adapters are changed in the config file
    loaded: bool  # loaded on the base's backend now (adapters load on first use)


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterInfo]


def _info(model: AdapterModel) -> AdapterInfo:
    return AdapterInfo(
        name=model.spec.name,
        base=model.parent.spec.name,
        path=model.adapter.path,
        scale=model.adapter.scale,
        source="created" if model.user_created else "config",
        loaded=model.loaded,
    )


def _adapters_of(models: ModelsDep, base: str) -> list[AdapterModel]:
    model = adapter_base(models, base)
    return [a for a in models.adapters_of(model) if isinstance(a, AdapterModel)]


@router.get("/models/{base:path}/adapters")
async def list_adapters(base: str, models: ModelsDep, _: AdminAccess) -> AdapterList:
    """The model's adapters, from the config file and added at run time."""
    return AdapterList(data=[_info(a) for a in _adapters_of(models, base)])


@router.post("/models/{base:path}/adapters", status_code=201)
async def add_adapter(
    base: str, body: AdapterSpec, models: ModelsDep, store: StoreDep, _: AdminAccess, request: Request
) -> AdapterInfo:
    """Load an adapter onto the model (loading the model first if it is not) and serve it as `name`;
    the adapter's files are checked by loading them, so a bad adapter is a 400 naming what is wrong."""
    model = await install_adapter(models, store, adapter_base(models, base), body)
    request.state.tandem_model = model.spec.name
    return _info(model)


@router.delete("/models/{base:path}/adapters/{name}")
async def delete_adapter(
    base: str, name: str, models: ModelsDep, store: StoreDep, _: AdminAccess
) -> AdapterInfo:
    """Stop serving an adapter added at run time; the model itself stays loaded."""
    found = next((a for a in _adapters_of(models, base) if a.spec.name == name), None)
    if found is None:
        raise APIError(
            404, f"model '{base}' has no adapter '{name}'", type="not_found_error", code="adapter_not_found"
        )
    info = _info(found)
    await remove_adapter(models, store, found)
    return info.model_copy(update={"loaded": False})
