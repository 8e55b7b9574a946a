"""Ollama's model endpoints: GET /api/tags, POST /api/show, GET /api/ps, GET /api/version."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request

from backends.base import ModelInfo
from gateway import __version__
from gateway.deps import RegistryDep
from gateway.errors import APIError, bad_request
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
from gateway.registry import ModelRegistry, ServedModel

router = APIRouter(prefix="/api", tags=["ollama"])
LATEST = ":latest"
OLLAMA_PARAMETER_NAMES = {"max_tokens": "num_predict", "repetition_penalty": "repeat_penalty"}


def _ollama_name(name: str) -> str:
    return name if ":" in name else name + LATEST


def resolve_ollama_model(registry: ModelRegistry, name: str, request: Request) -> ServedModel:
    """Ollama names carry a tag; "tiny:latest" is "tiny"."""
    model = registry.resolve(name) or registry.resolve(name.removesuffix(LATEST))
    if model is None:
        raise APIError(404, f"model '{name}' not found", type="not_found_error")
    request.state.tandem_backend = model.backend.kind
    request.state.tandem_model = model.spec.name
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


def _listed(model: ServedModel, name: str) -> ListedModel:
    info = model.backend.describe()
    path = model.spec.resolved_path() if model.spec.path else None
    modified = datetime.fromtimestamp(path.stat().st_mtime if path else model.created, UTC)
    # Hashing multi-GB weights on every listing is too slow; identify the file by path, size and time instead.
    digest = hashlib.sha256(f"{path}:{info.size_bytes}:{modified.timestamp()}".encode()).hexdigest()
    return ListedModel(
        name=name, model=name, modified_at=modified.isoformat(), size=info.size_bytes, digest=digest,
        details=_details(info),
    )  # fmt: skip


@router.get("/tags")
async def tags(registry: RegistryDep) -> TagsResponse:
    return TagsResponse(models=[_listed(m, _ollama_name(name)) for m in registry for name in m.names])


@router.get("/ps")
async def running(registry: RegistryDep) -> PsResponse:
    # Models stay loaded while tandem runs; Ollama reports "forever" as a far-future expiry.
    forever = (datetime.now(UTC) + timedelta(days=365 * 100)).isoformat()
    return PsResponse(
        models=[
            RunningModel(
                **_listed(m, _ollama_name(m.spec.name)).model_dump(), expires_at=forever, size_vram=0
            )
            for m in registry
        ]
    )


@router.get("/version")
async def version() -> VersionResponse:
    return VersionResponse(version=OLLAMA_API_VERSION)


def _modelfile(model: ServedModel) -> tuple[str, str]:
    spec = model.spec
    parameters = [
        f"{OLLAMA_PARAMETER_NAMES.get(name, name)} {value}"
        for name, value in spec.parameters.model_dump(exclude_none=True).items()
        if name != "stop"
    ] + [f'stop "{stop}"' for stop in spec.parameters.stop or []]
    lines = [f"# tandem {__version__}: model {spec.name} on backend {spec.backend}", f"FROM {spec.path}"]
    if spec.system is not None:
        lines.append(f'SYSTEM """{spec.system}"""')
    lines += [f"PARAMETER {p}" for p in parameters]
    return "\n".join(lines) + "\n", "\n".join(parameters)


@router.post("/show")
async def show(body: ShowRequest, registry: RegistryDep, request: Request) -> ShowResponse:
    name = body.model or body.name
    if not name:
        raise bad_request("model is required")
    model = resolve_ollama_model(registry, name, request)
    info = model.backend.describe()
    modelfile, parameters = _modelfile(model)
    listed = _listed(model, _ollama_name(name))
    return ShowResponse(
        modelfile=modelfile,
        parameters=parameters,
        template=info.chat_template or "",
        system=model.spec.system or "",
        details=listed.details,
        model_info={
            "general.architecture": info.family,
            "general.parameter_count": info.parameter_count,
            f"{info.family}.context_length": model.backend.context_length,
        },
        capabilities=["completion"],
        modified_at=listed.modified_at,
    )
