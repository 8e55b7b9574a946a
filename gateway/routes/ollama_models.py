"""Ollama's model endpoints: GET /api/tags, POST /api/show, GET /api/ps, GET /api/version."""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request

from backends.base import ChatMessage, ModelInfo
from gateway import __version__
from gateway.adapter_models import AdapterModel
from gateway.deps import ModelsDep, may_see, record_model
from gateway.errors import APIError, bad_request
from gateway.modelfile import render_modelfile
from gateway.ollama_protocol import (
    OLLAMA_API_VERSION,
    ListedModel,
    ModelDetails,
    PsResponse,
    RunningModel,
    ShowRequest,
    ShowResponse,
    TagsResponse,
    VersionResponse,
)
from gateway.registry import ManagedModel, ModelManager, ModelState
from gateway.startup import model_capabilities

logger = logging.getLogger("tandem.gateway")
router = APIRouter(prefix="/api", tags=["ollama"])
LATEST = ":latest"


def _ollama_name(name: str) -> str:
    return name if ":" in name else name + LATEST


def resolve_ollama_model(models: ModelManager, name: str, request: Request) -> ManagedModel:
    """Ollama names carry a tag; "tiny:latest" is "tiny"."""
    model = models.resolve(name) or models.resolve(name.removesuffix(LATEST))
    if model is None or not may_see(request, model):
        raise APIError(404, f"model '{name}' not found", type="not_found_error")
    record_model(request, model)
    return model


def _parameter_size(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def _details(info: ModelInfo) -> ModelDetails:
    return ModelDetails(
        format=info.format,
        family=info.family,
        families=[info.family],
        parameter_size=_parameter_size(info.parameter_count),
        quantization_level=info.quantization,
    )


def _listed(model: ManagedModel, name: str) -> ListedModel:
    info = model.info
    modified = datetime.fromtimestamp(model.created, UTC)
    # Hashing multi-GB weights on every listing is too slow; identify the file by path, size and time instead.
    digest = hashlib.sha256(f"{model.path}:{info.size_bytes}:{model.created}".encode()).hexdigest()
    details = _details(info)
    if model.base is not None:  # a LoRA adapter: Ollama's parent_model names the model it runs on
        details.parent_model = _ollama_name(model.base.spec.name)
    return ListedModel(
        name=name, model=name, modified_at=modified.isoformat(), size=info.size_bytes, digest=digest,
        details=details,
    )  # fmt: skip


def _readable(model: ManagedModel) -> bool:
    """Whether the model's files can be described. A file broken or removed after the model was made is
    logged and left out of listings: one bad model must not take /api/tags or /api/ps down for everyone."""
    try:
        model.info  # noqa: B018 (read once, then cached)
    except Exception as exc:  # the GGUF and safetensors readers fail in many ways on a broken file
        logger.error(
            "model %r left out of the listing: %s cannot be read (%s)", model.spec.name, model.path, exc
        )
        return False
    return True


def _unreadable(model: ManagedModel, name: str) -> APIError:
    return APIError(
        503, f"model '{name}' is unavailable: its files at {model.path} cannot be read",
        type="server_error", code="model_unreadable",
    )  # fmt: skip


@router.get("/tags")
async def tags(models: ModelsDep, request: Request) -> TagsResponse:
    visible = [m for m in [*models, *models.adapters()] if may_see(request, m) and _readable(m)]
    return TagsResponse(models=[_listed(m, _ollama_name(name)) for m in visible for name in m.names])


def _expires_at(model: ManagedModel) -> str:
    if model.expires_at is None:  # in use, or kept forever: Ollama shows a far-future expiry
        return (datetime.now(UTC) + timedelta(days=365 * 100)).isoformat()
    return (datetime.now(UTC) + timedelta(seconds=max(model.expires_at - time.monotonic(), 0))).isoformat()


@router.get("/ps")
async def running(models: ModelsDep, request: Request) -> PsResponse:
    return PsResponse(
        models=[
            RunningModel(
                **_listed(m, _ollama_name(m.spec.name)).model_dump(), expires_at=_expires_at(m), size_vram=0
            )
            for m in models
            # loading ones too, as Ollama
            if m.state is not ModelState.UNLOADED and may_see(request, m) and _readable(m)
        ]
    )


@router.get("/version")
async def version() -> VersionResponse:
    return VersionResponse(version=OLLAMA_API_VERSION)


def _modelfile(model: ManagedModel) -> tuple[str, str]:
    """The Modelfile that recreates the model, and its PARAMETER lines alone (as Ollama's `parameters`)."""
    spec = model.spec
    parameters = spec.parameters.model_dump(exclude_none=True)
    if spec.context_length is not None:
        parameters["context_length"] = spec.context_length
    messages = [ChatMessage(role=m.role, content=m.content) for m in spec.messages]
    adapters = [(str(model.path), model.adapter.scale)] if isinstance(model, AdapterModel) else None
    base = model.base.spec.name if model.base is not None else str(model.path)
    text = render_modelfile(base, spec.system, parameters, messages, adapters)
    header = f"# tandem {__version__}: model {spec.name} on backend {spec.backend}\n"
    parameter_lines = [
        line.removeprefix("PARAMETER ") for line in text.splitlines() if line.startswith("PARAMETER")
    ]
    return header + text, "\n".join(parameter_lines)


@router.post("/show")
async def show(body: ShowRequest, models: ModelsDep, request: Request) -> ShowResponse:
    name = body.model or body.name
    if not name:
        raise bad_request("model is required")
    model = resolve_ollama_model(models, name, request)
    if not _readable(model):
        raise _unreadable(model, name)
    info = model.info
    modelfile, parameters = _modelfile(model)
    listed = _listed(model, _ollama_name(name))
    return ShowResponse(
        modelfile=modelfile,
        parameters=parameters,
        template=model.spec.chat_template or info.chat_template or "",
        system=model.spec.system or "",
        details=listed.details,
        model_info={
            "general.architecture": info.family,
            "general.parameter_count": info.parameter_count,
            f"{info.family}.context_length": model.context_length,
        },
        capabilities=["completion", "embedding"] if model_capabilities(model).embeddings else ["completion"],
        modified_at=listed.modified_at,
    )
