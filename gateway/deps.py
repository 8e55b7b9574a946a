"""Typed dependencies: what routes get injected, built once in the app's lifespan.

All are `async def`: FastAPI runs plain functions in its thread pool, a hop per dependency per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from gateway.auth import Access, Principal
from gateway.auth.access import NO_TEAM
from gateway.errors import APIError
from gateway.metrics import GatewayMetrics
from gateway.model_store import ModelStore
from gateway.registry import ManagedModel, ModelManager
from gateway.routing import Router
from gateway.settings import Settings


async def get_models(request: Request) -> ModelManager:
    return request.app.state.models


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


async def get_principal(request: Request) -> Principal:
    """Who is calling: authenticated on every API request (anonymous when access control is off)."""
    access: Access = request.app.state.access
    principal = await access.authenticate(
        request.headers.get("authorization"), request.headers.get("x-api-key")
    )
    request.state.principal = principal
    request.state.tandem_team = principal.team or NO_TEAM
    return principal


async def require_admin(request: Request, principal: Annotated[Principal, Depends(get_principal)]) -> None:
    """Changing the set of models (pull, create, copy, delete) is for the master key on a shared endpoint,
    and for keys created with manage_models (`tandem keys create --manage-models`)."""
    if request.app.state.access.enabled and not principal.may_manage_models:
        raise APIError(
            403,
            "changing models (pull, create, copy, delete) needs the master key or a key created with "
            "manage_models (tandem keys create --manage-models)",
            code="insufficient_permissions",
        )


ModelsDep = Annotated[ModelManager, Depends(get_models)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[None, Depends(require_admin)]


@dataclass(frozen=True, slots=True)
class CallContext:
    """What serving one generation call needs besides its body."""

    request: Request
    models: ModelManager
    router: Router
    metrics: GatewayMetrics
    access: Access
    principal: Principal

    @property
    def request_id(self) -> str:
        return self.request.state.request_id


async def get_call(
    request: Request,
    models: ModelsDep,
    principal: PrincipalDep,
    metrics: Annotated[GatewayMetrics, Depends(get_metrics)],
) -> CallContext:
    state = request.app.state
    return CallContext(request, models, state.router, metrics, state.access, principal)


CallDep = Annotated[CallContext, Depends(get_call)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
StoreDep = Annotated[ModelStore, Depends(get_store)]


def record_model(request: Request, model: ManagedModel) -> None:
    """Which model and backend served the request: the x-tandem-backend header and the metrics' labels."""
    request.state.tandem_backend = model.spec.backend
    request.state.tandem_model = model.spec.name


def may_see_names(request: Request, names: list[str]) -> bool:
    """Whether the caller's key may use a model known by these names (its model globs); always true
    without access control."""
    principal = getattr(request.state, "principal", None)
    return principal is None or request.app.state.access.may_use(principal, *names)


def usable_names(request: Request, router: Router) -> list[str]:
    """Every model name the caller may send (names and aliases; globs as written), for error messages."""
    return [
        name
        for spec in router.entries()
        if may_see_names(request, [spec.name, *spec.aliases])
        for name in [spec.name, *spec.aliases]
    ]


def may_see(request: Request, model: ManagedModel) -> bool:
    return may_see_names(request, model.names)
