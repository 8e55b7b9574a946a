"""The embedded store: one process, no Redis. The same counter arithmetic as redis_scripts.py's Lua, line
for line, made atomic by a lock instead of by Redis running one script at a time."""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from gateway.auth.records import KeyRecord, TeamRecord
from gateway.auth.store import NEVER, Adjustment, Counter, CounterState, Reservation, UsageEntry

SLOT_RETRY_MS = 1000  # when a parallel slot frees up is unknowable; suggest a short wait


class MemoryStore:
    description = "in-process memory (one replica only; set redis_url to share keys and limits)"

    def __init__(self, *, clock_ms: Callable[[], int] | None = None, usage_retention_days: int = 400) -> None:
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._retention_days = usage_retention_days
        # a threading lock, not an asyncio one: nothing here awaits, and it also guards callers in threads
        self._lock = threading.Lock()
        self._keys: dict[str, KeyRecord] = {}
        self._teams: dict[str, TeamRecord] = {}
        self._buckets: dict[str, tuple[float, int]] = {}  # key -> (level, at ms)
        self._windows: dict[str, tuple[int, int]] = {}  # key -> (period, used)
        self._slots: dict[str, dict[str, int]] = defaultdict(dict)  # key -> member -> lease end ms
        self._usage: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    # ---- records ------------------------------------------------------------------------------------------

    async def get_key(self, key_id: str) -> KeyRecord | None:
        record = self._keys.get(key_id)
        return record.model_copy(deep=True) if record else None

    async def put_key(self, record: KeyRecord) -> None:
        self._keys[record.id] = record.model_copy(deep=True)

    async def list_keys(self) -> list[KeyRecord]:
        return [record.model_copy(deep=True) for record in self._keys.values()]

    async def get_team(self, name: str) -> TeamRecord | None:
        record = self._teams.get(name)
        return record.model_copy(deep=True) if record else None

    async def put_team(self, record: TeamRecord) -> None:
        self._teams[record.name] = record.model_copy(deep=True)

    async def list_teams(self) -> list[TeamRecord]:
        return [record.model_copy(deep=True) for record in self._teams.values()]

    # ---- limiter primitive --------------------------------------------------------------------------------

    def _bucket_level(self, counter: Counter, now: int) -> float:
        stored = self._buckets.get(counter.key)
        if stored is None:
            return float(counter.limit)
        level, at = stored
        return min(counter.limit, level + max(0, now - at) * counter.limit / counter.param_ms)

    def _state(self, counter: Counter, now: int) -> CounterState:
        limit, cost = counter.limit, counter.cost
        if counter.kind == "bucket":
            rate = limit / counter.param_ms
            level = self._bucket_level(counter, now)
            if cost <= level:
                remaining, retry = level - cost, 0
            elif cost > limit:
                remaining, retry = level, NEVER
            else:
                remaining, retry = level, math.ceil((cost - level) / rate)
            reset = math.ceil((limit - remaining) / rate)
            return CounterState(math.floor(remaining), reset, retry, 0)
        if counter.kind == "window":
            period = now // counter.param_ms
            stored_period, used = self._windows.get(counter.key, (-1, 0))
            used = used if stored_period == period else 0
            reset = (period + 1) * counter.param_ms - now
            if used + cost <= limit:
                return CounterState(limit - used - cost, reset, 0, period)
            return CounterState(max(0, limit - used), reset, NEVER if cost > limit else reset, period)
        leases = self._slots[counter.key]
        for member in [m for m, end in leases.items() if end <= now]:
            del leases[member]  # leases of admissions whose replica never settled them
        busy = len(leases)
        if busy + cost <= limit:
            return CounterState(limit - busy - cost, 0, 0, 0)
        return CounterState(max(0, limit - busy), 0, SLOT_RETRY_MS, 0)

    def _apply(self, counter: Counter, state: CounterState, member: str, now: int) -> None:
        if counter.kind == "bucket":
            self._buckets[counter.key] = (self._bucket_level(counter, now) - counter.cost, now)
        elif counter.kind == "window":
            stored_period, used = self._windows.get(counter.key, (-1, 0))
            used = used if stored_period == state.period else 0
            self._windows[counter.key] = (state.period, used + counter.cost)
        else:
            self._slots[counter.key][member] = now + counter.param_ms

    async def reserve(self, counters: Sequence[Counter], member: str) -> Reservation:
        with self._lock:
            now = self._clock_ms()
            states = tuple(self._state(counter, now) for counter in counters)
            refused = _longest_wait(states)
            if refused is None:
                for counter, state in zip(counters, states, strict=True):
                    self._apply(counter, state, member, now)
            return Reservation(states=states, refused=refused)

    async def settle(self, adjustments: Sequence[Adjustment], member: str, usage: UsageEntry | None) -> None:
        with self._lock:
            now = self._clock_ms()
            for adjustment in adjustments:
                counter = adjustment.counter
                if counter.kind == "bucket" and adjustment.delta != 0:
                    level = min(counter.limit, self._bucket_level(counter, now) - adjustment.delta)
                    self._buckets[counter.key] = (level, now)
                elif counter.kind == "window" and adjustment.delta != 0:
                    period, used = self._windows.get(counter.key, (-1, 0))
                    if period == adjustment.period:  # the period rolled over: the old one is gone
                        self._windows[counter.key] = (period, max(0, used + adjustment.delta))
                elif counter.kind == "slots":
                    self._slots[counter.key].pop(member, None)
            if usage is not None:
                day = self._usage[usage.day]
                day[usage.field_prefix + "r"] += 1
                day[usage.field_prefix + "p"] += usage.prompt_tokens
                day[usage.field_prefix + "c"] += usage.completion_tokens
                for old in sorted(self._usage)[: max(0, len(self._usage) - self._retention_days)]:
                    del self._usage[old]

    async def usage_counts(self, days: Sequence[str]) -> dict[str, dict[str, int]]:
        with self._lock:
            return {day: dict(self._usage[day]) for day in days if day in self._usage}


def _longest_wait(states: Sequence[CounterState]) -> int | None:
    """The refusal to report: the counter that needs the longest wait (one that can never fit wins)."""
    refused: int | None = None
    for index, state in enumerate(states):
        if state.retry_ms == 0:
            continue
        if (
            refused is None
            or state.retry_ms == NEVER
            or (states[refused].retry_ms != NEVER and state.retry_ms > states[refused].retry_ms)
        ):
            refused = index
    return refused
