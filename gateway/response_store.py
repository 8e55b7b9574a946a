"""Stored responses (`store: true`), for previous_response_id, GET/DELETE /v1/responses/{id} and input_items.

They live where the API keys live: in-process memory without Redis, Redis with auth.redis_url (so every
replica continues every conversation), each kept for TANDEM_RESPONSES_RETENTION_S. A response belongs to the
namespace of the key that made it (its team's, when the key has one); any other namespace gets a 404, the
same answer as an id that never existed, so ids cannot be probed. Without access control, all callers share
one namespace.

Redis layout: {prefix}response:{id}  string  StoredResponse JSON, with the retention as its TTL.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from fastapi import Request
from pydantic import BaseModel, TypeAdapter

from gateway.auth import Principal
from gateway.auth.settings import AuthSettings
from gateway.errors import APIError
from gateway.responses_objects import ResponseObject
from gateway.responses_protocol import InputItem

T = TypeVar("T")
_ITEM: TypeAdapter[InputItem] = TypeAdapter(InputItem)
SHARED_NAMESPACE = "shared"  # access control off


def namespace(principal: Principal) -> str:
    if principal.team is not None:
        return f"team:{principal.team}"
    if principal.key_id is not None:
        return f"key:{principal.key_id}"
    return "master" if principal.is_master else SHARED_NAMESPACE


class StoredResponse(BaseModel):
    namespace: str
    response: ResponseObject
    input_items: list[InputItem]  # this request's input, each item with an id
    history: list[InputItem]  # the items previous_response_id brought in (its whole conversation)

    def conversation(self) -> list[InputItem]:
        """What a response continuing this one starts from: everything before it, its input, its output."""
        output = [_ITEM.validate_python(item.model_dump()) for item in self.response.output]
        return [*self.history, *self.input_items, *output]


class ResponseStore(Protocol):
    description: str

    async def get(self, namespace: str, response_id: str) -> StoredResponse | None: ...

    async def put(self, record: StoredResponse) -> None: ...

    async def delete(self, namespace: str, response_id: str) -> bool: ...

    async def aclose(self) -> None: ...


class MemoryResponseStore:
    """One process's responses. All are kept for the same time, so the oldest expires first: expired ones
    are dropped from the front as new ones arrive, and memory holds at most one retention's worth."""

    description = "in-process memory"

    def __init__(self, retention_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._retention_s = retention_s
        self._clock = clock
        self._records: OrderedDict[str, tuple[float, str]] = OrderedDict()  # id -> (expires at, JSON)

    async def get(self, namespace: str, response_id: str) -> StoredResponse | None:
        entry = self._records.get(response_id)
        if entry is None or entry[0] <= self._clock():
            return None
        record = StoredResponse.model_validate_json(entry[1])  # a copy: callers cannot change what is stored
        return record if record.namespace == namespace else None

    async def put(self, record: StoredResponse) -> None:
        now = self._clock()
        while self._records and next(iter(self._records.values()))[0] <= now:
            self._records.popitem(last=False)
        self._records[record.response.id] = (now + self._retention_s, record.model_dump_json())

    async def delete(self, namespace: str, response_id: str) -> bool:
        if await self.get(namespace, response_id) is None:
            return False
        del self._records[response_id]
        return True

    async def aclose(self) -> None:
        return None


class RedisResponseStore:
    def __init__(self, settings: AuthSettings, retention_s: float) -> None:
        from redis.asyncio import Redis  # only with Redis configured

        from gateway.auth.redis_store import redacted_url

        assert settings.redis_url is not None
        self.description = f"Redis at {redacted_url(settings.redis_url)}"
        self._prefix = f"{settings.redis_prefix}response:"
        self._ttl_s = max(1, int(retention_s))
        self._deadline_s = 3 * settings.redis_timeout_s
        timeout = settings.redis_timeout_s
        self._redis = Redis.from_url(
            settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )

    async def _call(self, operation: Awaitable[T]) -> T:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self._deadline_s):
                return await operation
        except (RedisError, OSError, TimeoutError) as exc:
            raise store_unavailable(self.description, exc) from exc

    async def _raw(self, namespace: str, response_id: str) -> StoredResponse | None:
        raw = await self._call(self._redis.get(self._prefix + response_id))
        if not raw:
            return None
        record = StoredResponse.model_validate_json(raw)
        return record if record.namespace == namespace else None

    async def get(self, namespace: str, response_id: str) -> StoredResponse | None:
        return await self._raw(namespace, response_id)

    async def put(self, record: StoredResponse) -> None:
        key = self._prefix + record.response.id
        await self._call(self._redis.set(key, record.model_dump_json(), ex=self._ttl_s))

    async def delete(self, namespace: str, response_id: str) -> bool:
        if await self._raw(namespace, response_id) is None:
            return False
        return bool(await self._call(self._redis.delete(self._prefix + response_id)))

    async def aclose(self) -> None:
        await self._redis.aclose()


def store_unavailable(description: str, exc: BaseException) -> APIError:
    return APIError(503, f"The response store ({description}) is unavailable: {type(exc).__name__}. "
                    "Please try again shortly.", type="server_error", code="response_store_unavailable",
                    headers={"Retry-After": "1"})  # fmt: skip


def open_response_store(settings: AuthSettings, retention_s: float) -> ResponseStore:
    """Next to the keys: Redis when access control stores there, else this process's memory."""
    if settings.redis_url:
        return RedisResponseStore(settings, retention_s)
    return MemoryResponseStore(retention_s)


async def get_response_store(request: Request) -> ResponseStore:
    return request.app.state.responses
