"""GET /health: 200 while every configured model can serve (loading on demand if needed), 503 while a
model's backend has failed and has not been loaded again (it is being reloaded).

Probes call it without credentials. With access control on, such callers learn only ok / not ok: model
names, states and failures are for the master key (a tenant's key may not see every model's name).
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway.auth import Access
from gateway.deps import ModelsDep
from gateway.errors import APIError
from gateway.registry import ManagedModel

router = APIRouter(tags=["health"])


class FailedModel(BaseModel):
    model: str
    error: str  # why its backend failed
    failed_at: str  # ISO 8601, UTC
    reload_error: str | None = None  # set when the reload failed as well (the next request retries)


class Health(BaseModel):
    status: str  # "ok" or "unhealthy"
    models: list[str] | None = None  # the details below: without access control, or for the master key
    loaded: list[str] | None = None
    states: dict[str, str] | None = None  # unloaded | loading | loaded
    failed: list[FailedModel] | None = None


def _failed(model: ManagedModel) -> FailedModel:
    failure = model.failure
    assert failure is not None
    at = datetime.fromtimestamp(failure.at, UTC).isoformat().replace("+00:00", "Z")
    return FailedModel(
        model=model.spec.name, error=failure.error, failed_at=at, reload_error=failure.reload_error
    )


async def _sees_details(request: Request) -> bool:
    access: Access = request.app.state.access
    if not access.enabled:
        return True
    try:
        principal = await access.authenticate(
            request.headers.get("authorization"), request.headers.get("x-api-key")
        )
    except APIError:  # no key, a wrong one, or the key store down: a probe still gets its answer
        return False
    return principal.is_master


@router.get(
    "/health", response_model=Health, responses={503: {"model": Health, "description": "a model failed"}}
)
async def health(request: Request, models: ModelsDep) -> JSONResponse:
    for model in models:
        models.check_backend(model)  # a backend failed since the reaper last looked: report it now
    failed = models.failed()
    body = Health(status="unhealthy" if failed else "ok")
    if await _sees_details(request):
        body.models = [m.spec.name for m in models]
        body.loaded = [m.spec.name for m in models.loaded()]
        body.states = {m.spec.name: m.state.value for m in models}
        body.failed = [_failed(m) for m in failed]
    return JSONResponse(body.model_dump(exclude_none=True), status_code=503 if failed else 200)
