"""The shared store: Redis, so that every replica sees the same keys, limits and usage.

Layout (prefix default `tandem:`):
  {p}key:{id}        string  KeyRecord JSON (sha256 of the secret, never the secret)
  {p}keys            set     key ids
  {p}team:{name}     string  TeamRecord JSON
  {p}teams           set     team names
  {p}rl:key:{id}:{rpm|tpm|budget|parallel}, {p}rl:team:{name}:...   limiter counters (store.py)
  {p}usage:{YYYY-MM-DD}  hash  usage counters (usage.py), expiring after the retention
Every call has a deadline, so a Redis that is down or stalled costs at most about a second, never a hang;
after a failure the circuit breaker (circuit.py) skips Redis until a background probe sees it answer, so
only the first request pays that deadline, not every request of an outage.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Sequence
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from gateway.auth import redis_scripts
from gateway.auth.circuit import CircuitBreaker, CircuitOpenError
from gateway.auth.records import KeyRecord, TeamRecord
from gateway.auth.store import (
    Adjustment,
    Counter,
    CounterState,
    Reservation,
    StoreUnavailableError,
    UsageEntry,
)

T = TypeVar("T")
_KIND = {"bucket": "b", "window": "w", "slots": "s"}


def redacted_url(url: str) -> str:
    """The Redis URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.5,
        prefix: str = "tandem:",
        usage_retention_days: int = 400,
        retry_s: float = 1.0,
    ) -> None:
        self.description = f"Redis at {redacted_url(url)}"
        self.prefix = prefix
        self._retention_s = usage_retention_days * 86400
        # One retry without backoff: it rides over a connection Redis closed (restart) but cannot stack
        # timeouts; the deadline below bounds everything else.
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        self._deadline_s = 3 * timeout_s
        self._admit = self._redis.register_script(redis_scripts.ADMIT)
        self._settle = self._redis.register_script(redis_scripts.SETTLE)
        self.circuit = CircuitBreaker(self._probe, retry_s, self.description)

    async def _call(self, operation: Awaitable[T]) -> T:
        try:
            self.circuit.check()
        except CircuitOpenError as exc:
            if inspect.iscoroutine(operation):
                operation.close()  # never started: nothing was sent to Redis
            raise StoreUnavailableError(str(exc)) from exc
        try:
            return await self._with_deadline(operation)
        except (RedisError, OSError, TimeoutError) as exc:
            if not isinstance(exc, ResponseError):  # Redis answered (an error reply): it is not down
                self.circuit.failed()
            raise StoreUnavailableError(f"{self.description}: {type(exc).__name__}: {exc}") from exc

    async def _with_deadline(self, operation: Awaitable[T]) -> T:
        async with asyncio.timeout(self._deadline_s):
            return await operation

    async def _probe(self) -> None:
        await self._with_deadline(self._redis.ping())

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def aclose(self) -> None:
        await self.circuit.aclose()
        await self._redis.aclose()

    # ---- records ------------------------------------------------------------------------------------------

    async def get_key(self, key_id: str) -> KeyRecord | None:
        raw = await self._call(self._redis.get(f"{self.prefix}key:{key_id}"))
        return KeyRecord.model_validate_json(raw) if raw else None

    async def put_key(self, record: KeyRecord) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(f"{self.prefix}key:{record.id}", record.model_dump_json())
        pipe.sadd(f"{self.prefix}keys", record.id)
        await self._call(pipe.execute())

    async def list_keys(self) -> list[KeyRecord]:
        ids = sorted(await self._call(self._redis.smembers(f"{self.prefix}keys")))
        if not ids:
            return []
        # str at run time (decode_responses=True), though redis-py types them as bytes
        keys = [f"{self.prefix}key:{key_id}" for key_id in ids]  # type: ignore[str-bytes-safe]
        raws = await self._call(self._redis.mget(keys))
        return [KeyRecord.model_validate_json(raw) for raw in raws if raw]

    async def get_team(self, name: str) -> TeamRecord | None:
        raw = await self._call(self._redis.get(f"{self.prefix}team:{name}"))
        return TeamRecord.model_validate_json(raw) if raw else None

    async def put_team(self, record: TeamRecord) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(f"{self.prefix}team:{record.name}", record.model_dump_json())
        pipe.sadd(f"{self.prefix}teams", record.name)
        await self._call(pipe.execute())

    async def list_teams(self) -> list[TeamRecord]:
        names = sorted(await self._call(self._redis.smembers(f"{self.prefix}teams")))
        if not names:
            return []
        # str at run time (decode_responses=True), though redis-py types them as bytes
        keys = [f"{self.prefix}team:{name}" for name in names]  # type: ignore[str-bytes-safe]
        raws = await self._call(self._redis.mget(keys))
        return [TeamRecord.model_validate_json(raw) for raw in raws if raw]

    # ---- limiter primitive --------------------------------------------------------------------------------

    async def reserve(self, counters: Sequence[Counter], member: str) -> Reservation:
        args: list[str | int] = [member]
        for counter in counters:
            args += [_KIND[counter.kind], counter.limit, counter.cost, counter.param_ms]
        out = await self._call(self._admit(keys=[self.prefix + c.key for c in counters], args=args))
        values = [int(v) for v in out]
        states = tuple(CounterState(*values[2 + 4 * i : 6 + 4 * i]) for i in range(len(counters)))
        return Reservation(states=states, refused=values[0] - 1 if values[0] else None)

    async def settle(self, adjustments: Sequence[Adjustment], member: str, usage: UsageEntry | None) -> None:
        keys = [self.prefix + a.counter.key for a in adjustments]
        args: list[str | int] = [member, "1" if usage else "0"]
        for a in adjustments:
            args += [_KIND[a.counter.kind], a.counter.limit, a.delta, a.counter.param_ms, a.period]
        if usage is not None:
            keys.append(f"{self.prefix}usage:{usage.day}")
            args += [usage.field_prefix, usage.prompt_tokens, usage.completion_tokens, self._retention_s]
        if keys:
            await self._call(self._settle(keys=keys, args=args))

    async def usage_counts(self, days: Sequence[str]) -> dict[str, dict[str, int]]:
        pipe = self._redis.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(f"{self.prefix}usage:{day}")
        results = await self._call(pipe.execute())
        return {
            day: {name: int(value) for name, value in fields.items()}
            for day, fields in zip(days, results, strict=True)
            if fields
        }
