"""Ollama's model management: POST /api/create (Modelfile), DELETE /api/delete, POST /api/copy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from backends.base import ChatMessage
from backends.chat_template import ChatTemplate, ChatTemplateError
from backends.inspect import inspect_model
from gateway.adapter_admin import adapter_base, install_adapter, remove_adapter
from gateway.adapter_models import AdapterModel
from gateway.config import AdapterSpec, ModelSpec
from gateway.deps import AdminDep, ModelsDep, StoreDep
from gateway.errors import APIError, bad_request
from gateway.model_store import StoreError
from gateway.modelfile import Modelfile, ModelfileError, parse_modelfile, set_parameter
from gateway.registry import ManagedModel, ModelManager
from gateway.routes.ollama_models import LATEST, resolve_ollama_model

router = APIRouter(prefix="/api", tags=["ollama"])
GO_TEMPLATE_MARKERS = ("{{ .", "{{- .", "{{.", ".Prompt", ".Messages")


class CreateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    name: str | None = None  # the older spelling
    modelfile: str | None = None  # the older API: the Modelfile's text
    from_: str | None = None
    system: str | None = None
    template: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict[str, str]] | None = None
    adapters: dict[str, str] | None = None
    quantize: str | None = None
    license: str | list[str] | None = None
    stream: bool = True

    def __init__(self, **data: Any) -> None:
        if "from" in data:  # a Python keyword: accepted under its JSON name
            data["from_"] = data.pop("from")
        super().__init__(**data)


class CopyRequest(BaseModel):
    source: str
    destination: str


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    name: str | None = None


def _modelfile_of(body: CreateRequest) -> Modelfile:
    try:
        result = parse_modelfile(body.modelfile) if body.modelfile else Modelfile(base=body.from_ or "")
        result.system = body.system if body.system is not None else result.system
        result.template = body.template if body.template is not None else result.template
        for name, value in (body.parameters or {}).items():
            for item in value if isinstance(value, list) else [value]:
                set_parameter(result, name, str(item))
        result.messages += [
            ChatMessage(role=m.get("role", ""), content=m.get("content", "")) for m in body.messages or []
        ]
    except ModelfileError as exc:
        raise bad_request(str(exc)) from None
    if body.adapters:  # Ollama's: file names -> digests of blobs pushed beforehand; tandem has no blob store
        raise bad_request(
            "'adapters' (uploaded blobs) are not supported: give a Modelfile with ADAPTER and the adapter's "
            "path on the server"
        )
    if not result.base:
        raise bad_request("neither 'from' nor a Modelfile with FROM was given")
    return result


def _base_spec(models: ModelManager, base: str) -> tuple[dict[str, Any], Path]:
    """What FROM names: another model (inherit its spec) or a GGUF file / checkpoint directory."""
    parent = models.resolve(base) or models.resolve(base.removesuffix(LATEST))
    if parent is not None:
        return parent.spec.model_dump(exclude={"name", "aliases", "demo", "preload"}), parent.path
    try:
        path = Path(base).expanduser()
    except RuntimeError:  # "~someone/..." for a user this machine does not have
        raise bad_request(f"FROM {base!r}: no such user's home directory") from None
    if path.is_file() and path.suffix == ".gguf":
        return {"backend": "llamacpp", "path": str(path)}, path
    if path.is_dir() and (path / "config.json").is_file():
        return {"backend": "paged", "path": str(path)}, path
    raise bad_request(f"FROM {base!r}: not a model name, a .gguf file or a Hugging Face checkpoint directory")


def adapter_of(models: ModelManager, name: str, modelfile: Modelfile) -> tuple[ManagedModel, AdapterSpec]:
    """FROM a model + ADAPTER path: a LoRA adapter model of its own, run by that model's backend."""
    if len(modelfile.adapters) > 1:
        raise bad_request("one ADAPTER per model: tandem applies a single LoRA adapter to a request")
    if models.resolve(modelfile.base) is None and models.resolve(modelfile.base.removesuffix(LATEST)) is None:
        raise bad_request(
            f"with ADAPTER, FROM must name a model this profile serves, not {modelfile.base!r}: "
            "the adapter runs on that model's backend"
        )
    settings = {
        "SYSTEM": modelfile.system,
        "TEMPLATE": modelfile.template,
        "MESSAGE": modelfile.messages or None,
        "PARAMETER": modelfile.parameters or modelfile.context_length,
    }
    taken = [instruction for instruction, value in settings.items() if value]
    if taken:
        raise bad_request(
            f"with ADAPTER, {', '.join(taken)} is not supported: an adapter model takes its base model's "
            "settings (make a model with them first, then the adapter FROM it)"
        )
    try:
        adapter = AdapterSpec(name=name, path=modelfile.adapters[0])
    except ValidationError as exc:
        raise bad_request(f"invalid adapter: {exc.errors()[0]['msg']}") from None
    return adapter_base(models, modelfile.base), adapter


def build_spec(models: ModelManager, name: str, modelfile: Modelfile) -> tuple[ModelSpec, Path]:
    if modelfile.template is not None:
        if any(marker in modelfile.template for marker in GO_TEMPLATE_MARKERS):
            raise bad_request("TEMPLATE uses Go template syntax; tandem takes a Jinja chat template there")
        try:
            ChatTemplate(modelfile.template)
        except ChatTemplateError as exc:
            raise bad_request(f"TEMPLATE: {exc}") from None
    fields, path = _base_spec(models, modelfile.base)
    parameters = {**fields.get("parameters", {}), **modelfile.parameters}
    overrides = {
        "name": name,
        "parameters": {k: v for k, v in parameters.items() if v is not None},
        "system": modelfile.system if modelfile.system is not None else fields.get("system"),
        "chat_template": modelfile.template
        if modelfile.template is not None
        else fields.get("chat_template"),
        "messages": [
            *fields.get("messages", []),
            *({"role": m.role, "content": m.content} for m in modelfile.messages),
        ],
        "context_length": modelfile.context_length or fields.get("context_length"),
    }
    try:
        return ModelSpec.model_validate({**fields, **overrides}), path
    except ValidationError as exc:
        error = exc.errors()[0]
        raise bad_request(
            f"invalid model definition: {'.'.join(map(str, error['loc']))}: {error['msg']}"
        ) from None


async def _readable(path: Path) -> None:
    """The files' header, read as the config path reads it at start: a file no backend can load (an empty
    or truncated GGUF) is refused now instead of becoming a record that breaks every listing."""
    try:
        await asyncio.to_thread(inspect_model, path)
    except Exception as exc:  # gguf and safetensors readers fail in many ways on a broken file
        raise bad_request(f"{path} is not a readable model: {exc}") from None


async def _install(models: ModelManager, store: StoreDep, spec: ModelSpec, path: Path) -> None:
    """Serve and persist a created model, both or neither: the record is on disk (flushed, under a
    temporary name) before the model is served, and renamed into place only once it is."""
    await _readable(path)
    existing = models.resolve(spec.name)
    keep_alive = existing.default_keep_alive_s if existing else models.default_keep_alive_s
    model = ManagedModel(spec, path, keep_alive, created=True)
    try:
        pending = await asyncio.to_thread(store.prepare, spec)  # fsync: off the event loop
    except StoreError as exc:
        raise _storage_error(exc) from None
    try:
        await models.add(model)
    except BaseException:
        pending.discard()
        raise
    try:
        pending.commit()
    except StoreError as exc:
        await models.remove(model)
        raise _storage_error(exc) from None


def _storage_error(exc: StoreError) -> APIError:
    code = "insufficient_storage" if exc.status == 507 else "storage_error"
    return APIError(exc.status, str(exc), type="server_error", code=code)


def _status_stream(statuses: list[str], stream: bool) -> Response:
    if not stream:
        return Response(json.dumps({"status": statuses[-1]}), media_type="application/json")

    async def lines() -> AsyncIterator[str]:
        for status in statuses:
            yield json.dumps({"status": status}) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.post("/create", response_model=None)
async def create(body: CreateRequest, models: ModelsDep, store: StoreDep, _: AdminDep) -> Response:
    name = (body.model or body.name or "").removesuffix(LATEST)
    if not name:
        raise bad_request("model name is required")
    if body.quantize:
        raise bad_request("quantize is not supported: create from an already quantized GGUF")
    modelfile = _modelfile_of(body)
    if modelfile.adapters:
        base, adapter = adapter_of(models, name, modelfile)
        await install_adapter(models, store, base, adapter)
        statuses = ["parsing modelfile", f"using LoRA adapter {adapter.path} on model {base.spec.name}"]
        return _status_stream([*statuses, "writing manifest", "success"], body.stream)
    spec, path = build_spec(models, name, modelfile)
    await _install(models, store, spec, path)
    statuses = ["parsing modelfile", f"using {spec.backend} model at {path}"]
    statuses += [f"ignoring runtime-only parameter {p}" for p in modelfile.ignored_parameters]
    return _status_stream([*statuses, "writing manifest", "success"], body.stream)


@router.post("/copy")
async def copy(
    body: CopyRequest, models: ModelsDep, store: StoreDep, request: Request, _: AdminDep
) -> Response:
    source = resolve_ollama_model(models, body.source, request)
    if isinstance(source, AdapterModel):  # the copy: another adapter model on the same base and files
        copied = source.adapter.model_copy(update={"name": body.destination.removesuffix(LATEST)})
        try:
            copied = AdapterSpec.model_validate(copied.model_dump())
        except ValidationError as exc:
            raise bad_request(f"invalid destination: {exc.errors()[0]['msg']}") from None
        await install_adapter(models, store, source.parent, copied)
        return Response(status_code=200)
    spec = source.spec.model_copy(update={"name": body.destination.removesuffix(LATEST), "aliases": [],
                                          "demo": False, "preload": False})  # fmt: skip
    try:
        spec = ModelSpec.model_validate(spec.model_dump())
    except ValidationError as exc:
        raise bad_request(f"invalid destination: {exc.errors()[0]['msg']}") from None
    await _install(models, store, spec, source.path)
    return Response(status_code=200)


@router.delete("/delete")
async def delete(
    body: DeleteRequest, models: ModelsDep, store: StoreDep, request: Request, _: AdminDep
) -> Response:
    name = body.model or body.name
    if not name:
        raise bad_request("model name is required")
    model = resolve_ollama_model(models, name, request)
    if not model.user_created:
        raise APIError(400, f"model '{name}' is defined in the config file; remove it there")
    if model.base is not None:
        await remove_adapter(models, store, model)
        return Response(status_code=200)
    await models.remove(model)
    store.delete(model.spec.name)
    return Response(status_code=200)
