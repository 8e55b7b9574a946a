"""The admin API under /admin: keys, team limits and usage. Master key only (open when access control is
off, like everything else); failures in OpenAI's error envelope."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import date
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from gateway.auth.access import Access
from gateway.auth.errors import insufficient_permissions, store_unavailable
from gateway.auth.records import Limits, TeamName
from gateway.auth.schemas import KeyCreate, KeyCreated, KeyInfo, KeyList, TeamInfo, TeamList, UsageReport
from gateway.auth.store import StoreUnavailableError

T = TypeVar("T")

# auto_error=False: a missing key is answered by Access.authenticate in OpenAI's envelope, not FastAPI's
_bearer = HTTPBearer(auto_error=False, description="the master key")
_api_key = APIKeyHeader(name="x-api-key", auto_error=False, description="the master key")


async def require_master(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> Access:
    access: Access = request.app.state.access
    authorization = f"Bearer {bearer.credentials}" if bearer else None
    principal = await access.authenticate(authorization, api_key)
    if access.enabled and not principal.is_master:
        raise insufficient_permissions()
    return access


AdminAccess = Annotated[Access, Depends(require_master)]
admin_router = APIRouter(prefix="/admin", tags=["admin"])


async def _stored(operation: Awaitable[T]) -> T:
    try:
        return await operation
    except StoreUnavailableError as exc:
        raise store_unavailable() from exc


@admin_router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, access: AdminAccess) -> KeyCreated:
    """A new API key. The response is the only time the key itself is shown."""
    created = await _stored(access.admin.create_key(body))
    return created if access.enabled else created.model_copy(update={"enforced": False})


@admin_router.get("/keys")
async def list_keys(access: AdminAccess) -> KeyList:
    """Every key, revoked and expired ones included: ids and prefixes, never secrets."""
    return KeyList(data=await _stored(access.admin.list_keys()))


@admin_router.get("/keys/{key_ref}")
async def get_key(key_ref: str, access: AdminAccess) -> KeyInfo:
    return await _stored(access.admin.get_key(key_ref))


@admin_router.delete("/keys/{key_ref}")
async def revoke_key(key_ref: str, access: AdminAccess) -> KeyInfo:
    """Revoke a key by id, prefix or the key itself; refused at once on every replica."""
    return await _stored(access.admin.revoke_key(key_ref))


@admin_router.put("/teams/{team}")
async def set_team(team: TeamName, limits: Limits, access: AdminAccess) -> TeamInfo:
    """Set a team's limits, shared by all its keys; limits left out are removed."""
    return await _stored(access.admin.set_team(team, limits))


@admin_router.get("/teams/{team}")
async def get_team(team: TeamName, access: AdminAccess) -> TeamInfo:
    return await _stored(access.admin.get_team(team))


@admin_router.get("/teams")
async def list_teams(access: AdminAccess) -> TeamList:
    return TeamList(data=await _stored(access.admin.list_teams()))


@admin_router.get("/usage")
async def usage(
    access: AdminAccess,
    key: Annotated[str | None, Query(description="a key id (or master / anonymous)")] = None,
    team: Annotated[str | None, Query()] = None,
    since: Annotated[date | None, Query(description="first UTC day; default 29 days before until")] = None,
    until: Annotated[date | None, Query(description="last UTC day; default today")] = None,
) -> UsageReport:
    """Requests and tokens per key, team, model and UTC day."""
    return await _stored(access.admin.usage(key, team, since, until))
