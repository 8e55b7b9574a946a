"""The storage interface behind access control, and the limiter's storage primitive.

The limiter's policy (which limits apply, headers, errors) lives once in limiter.py. A store only
implements two atomic steps over generic counters:

- reserve: check every counter, then reserve the cost in all of them or in none;
- settle: apply the real cost (a refund or an extra charge), free parallel slots and record usage.

Counters come in three kinds, each one Redis key:

- bucket: a token bucket holding up to `limit`, refilling fully in `param_ms` (rpm / tpm);
- window: `limit` per fixed period of `param_ms`, aligned to the Unix epoch (budgets);
- slots: up to `limit` admissions in flight, each a lease that expires after `param_ms` in case its
  replica dies before it settles (parallel requests).

RedisStore runs both steps as Lua scripts; MemoryStore runs the same arithmetic under a lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.auth.records import KeyRecord, TeamRecord

CounterKind = Literal["bucket", "window", "slots"]
NEVER = -1  # retry_ms of a cost larger than the limit itself: waiting does not help


class StoreUnavailableError(Exception):
    """The store could not be reached in time (Redis down, slow or refusing)."""


@dataclass(frozen=True, slots=True)
class Counter:
    key: str
    kind: CounterKind
    limit: int
    cost: int
    param_ms: int


@dataclass(frozen=True, slots=True)
class CounterState:
    remaining: int  # after this reservation; before it, when refused
    reset_ms: int  # until the counter is back to its full limit
    retry_ms: int  # until this cost would fit: 0 = fits now, NEVER = cannot fit
    period: int  # window counters: the period the reservation went to (settle reconciles only that one)


@dataclass(frozen=True, slots=True)
class Reservation:
    states: tuple[CounterState, ...]
    refused: int | None  # index of the refusing counter (the one with the longest wait), None if admitted

    @property
    def admitted(self) -> bool:
        return self.refused is None


@dataclass(frozen=True, slots=True)
class Adjustment:
    counter: Counter
    delta: int  # real cost - reserved cost (negative: a refund); ignored for slots
    period: int


@dataclass(frozen=True, slots=True)
class UsageEntry:
    day: str  # YYYY-MM-DD, UTC
    field_prefix: str  # usage.field_prefix(key, team, model)
    prompt_tokens: int
    completion_tokens: int


class Store(Protocol):
    description: str  # for the start-up log line; no credentials

    async def ping(self) -> None: ...

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def put_key(self, record: KeyRecord) -> None: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def get_team(self, name: str) -> TeamRecord | None: ...

    async def put_team(self, record: TeamRecord) -> None: ...

    async def list_teams(self) -> list[TeamRecord]: ...

    async def reserve(self, counters: Sequence[Counter], member: str) -> Reservation: ...

    async def settle(
        self, adjustments: Sequence[Adjustment], member: str, usage: UsageEntry | None
    ) -> None: ...

    async def usage_counts(self, days: Sequence[str]) -> dict[str, dict[str, int]]: ...

    async def aclose(self) -> None: ...
