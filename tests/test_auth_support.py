"""Helpers shared by the test_auth_* modules (no tests here)."""

from __future__ import annotations

import uuid

from pydantic import SecretStr

from gateway.auth import Access, AuthSettings
from gateway.auth.schemas import KeyCreate, KeyCreated
from tests.redis_server import RedisServer

MASTER = "master-key-for-tests"
STORES = ["memory", "redis"]


def settings_for(store: str, server: RedisServer | None, **overrides: object) -> AuthSettings:
    """Access on, with the chosen store; a fresh Redis key prefix so tests never see each other's data."""
    fields: dict[str, object] = {
        "master_key": SecretStr(MASTER),
        "redis_url": server.url if store == "redis" and server is not None else None,
        "redis_prefix": f"test-{uuid.uuid4().hex[:8]}:",
        **overrides,
    }
    return AuthSettings.model_validate(fields)


async def create_key(access: Access, name: str = "k", **fields: object) -> KeyCreated:
    return await access.admin.create_key(KeyCreate.model_validate({"name": name, **fields}))


def bearer(key: str) -> str:
    return f"Bearer {key}"
