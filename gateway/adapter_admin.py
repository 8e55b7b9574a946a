"""Adding and removing adapter models at run time (/api/create with ADAPTER, /api/copy, /api/delete and the
admin API), without reloading their base: serve and persist both or neither, as created models are."""

from __future__ import annotations

import asyncio

from gateway.adapter_models import AdapterModel, adapter_file_problem
from gateway.adapter_store import AdapterRecord, AdapterStore
from gateway.config import AdapterSpec
from gateway.errors import APIError, bad_request
from gateway.model_store import ModelStore, StoreError
from gateway.registry import ManagedModel, ModelManager


def storage_error(exc: StoreError) -> APIError:
    code = "insufficient_storage" if exc.status == 507 else "storage_error"
    return APIError(exc.status, str(exc), type="server_error", code=code)


def adapter_base(models: ModelManager, name: str) -> ManagedModel:
    """The model an adapter is put on: a model of this profile that runs somewhere, not an adapter itself."""
    base = models.resolve(name) or models.resolve(name.removesuffix(":latest"))
    if base is None:
        raise APIError(404, f"model '{name}' not found", type="not_found_error", code="model_not_found")
    if base.base is not None:
        raise bad_request(
            f"'{name}' is itself a LoRA adapter (of '{base.base.spec.name}'): adapters do not stack"
        )
    return base


async def install_adapter(
    models: ModelManager, store: ModelStore, base: ManagedModel, adapter: AdapterSpec
) -> AdapterModel:
    """Check the adapter by loading it onto its base (loaded first if it is not: a bad adapter fails now, with
    the backend's reason), then serve it under its name and persist it."""
    problem = adapter_file_problem(base.spec.backend, adapter)
    if problem is not None:
        raise bad_request(problem, param="path")
    existing = models.resolve(adapter.name)
    if existing is not None and not existing.user_created:
        raise bad_request(f"model {adapter.name!r} is defined in the config file; edit it there")
    if existing is not None and existing.in_use:
        raise APIError(409, f"model {adapter.name!r} is in use; try again when its requests finish")
    if isinstance(existing, AdapterModel):  # replaced: the new files, not the old ones loaded under the name
        await existing.unload_from_backend()
    model = AdapterModel(base, adapter, created=True)
    (await models.acquire(model)).release()
    record = AdapterRecord(base=base.spec.name, adapter=adapter)
    adapters = AdapterStore(store)
    try:
        pending = await asyncio.to_thread(adapters.prepare, record)  # fsync: off the event loop
    except StoreError as exc:
        await model.unload_from_backend()
        raise storage_error(exc) from None
    try:
        await models.add(model)
    except BaseException:
        pending.discard()
        await model.unload_from_backend()
        raise
    try:
        pending.commit()
    except StoreError as exc:
        await remove_adapter(models, store, model)
        raise storage_error(exc) from None
    return model


async def remove_adapter(models: ModelManager, store: ModelStore, model: ManagedModel) -> None:
    """Stop serving a created adapter model and forget it; its base stays loaded."""
    if not isinstance(model, AdapterModel):
        raise bad_request(f"model '{model.spec.name}' is not a LoRA adapter")
    if not model.user_created:
        raise bad_request(f"adapter '{model.spec.name}' is defined in the config file; remove it there")
    await models.remove(model)  # 409 while it serves requests
    await model.unload_from_backend()
    AdapterStore(store).delete(model.spec.name)
