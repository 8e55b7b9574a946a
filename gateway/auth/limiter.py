"""Limiter policy, written once for every store: which counters a request touches, what it owes at the
end, and how an admission or a refusal reads to the client (OpenAI's 429 and x-ratelimit-* headers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.auth.keys import key_prefix
from gateway.auth.records import Limits
from gateway.auth.store import NEVER, Adjustment, Counter, CounterState
from gateway.errors import APIError

LimitName = Literal["rpm", "tpm", "parallel", "budget"]
MINUTE_MS = 60_000


@dataclass(frozen=True, slots=True)
class PlannedLimit:
    scope: Literal["key", "team"]
    owner: str  # who the limit belongs to, as messages name it: a key's prefix or a team's name
    team: str | None  # the team the request counts for (the metric label)
    name: LimitName
    counter: Counter


def plan_limits(
    key_id: str,
    key_limits: Limits,
    team: str | None,
    team_limits: Limits | None,
    reserved_tokens: int,
    lease_ms: int,
) -> tuple[PlannedLimit, ...]:
    """The counters one request reserves in: the key's limits and its team's, all in one atomic step."""
    owners: list[tuple[Literal["key", "team"], str, str, Limits]] = [
        ("key", key_prefix(key_id), f"rl:key:{key_id}", key_limits)
    ]
    if team is not None and team_limits is not None:
        owners.append(("team", f"team {team}", f"rl:team:{team}", team_limits))
    planned: list[PlannedLimit] = []
    for scope, owner, base, limits in owners:
        counters: list[tuple[LimitName, Counter]] = []
        if limits.rpm:
            counters.append(("rpm", Counter(f"{base}:rpm", "bucket", limits.rpm, 1, MINUTE_MS)))
        if limits.tpm:
            counters.append(("tpm", Counter(f"{base}:tpm", "bucket", limits.tpm, reserved_tokens, MINUTE_MS)))
        if limits.max_parallel:
            counters.append(
                ("parallel", Counter(f"{base}:parallel", "slots", limits.max_parallel, 1, lease_ms))
            )
        if limits.budget_tokens:
            period_ms = limits.budget_period_s() * 1000
            counters.append(
                (
                    "budget",
                    Counter(f"{base}:budget", "window", limits.budget_tokens, reserved_tokens, period_ms),
                )
            )
        planned += [PlannedLimit(scope, owner, team, name, counter) for name, counter in counters]
    return tuple(planned)


def adjustments(
    planned: Sequence[PlannedLimit], states: Sequence[CounterState], used_tokens: int
) -> list[Adjustment]:
    """What settle applies: token counters get the real count instead of the reservation; slots are freed."""
    out: list[Adjustment] = []
    for limit, state in zip(planned, states, strict=True):
        if limit.name in ("tpm", "budget"):
            out.append(Adjustment(limit.counter, used_tokens - limit.counter.cost, state.period))
        elif limit.name == "parallel":
            out.append(Adjustment(limit.counter, 0, state.period))
    return out  # rpm: the request happened; nothing to give back


def format_reset(ms: int) -> str:
    """A duration as OpenAI writes x-ratelimit-reset-*: 120ms, 1s, 8.64s, 6m0s, 1h2m3s."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def _tightest(
    planned: Sequence[PlannedLimit], states: Sequence[CounterState], name: LimitName, refused: bool
) -> tuple[PlannedLimit, int, int] | None:
    best: tuple[PlannedLimit, int, int] | None = None
    for limit, state in zip(planned, states, strict=True):
        if limit.name != name:
            continue
        # a refusal reserved nothing: a counter that had room still has all of it
        remaining = (
            state.remaining + limit.counter.cost if refused and state.retry_ms == 0 else state.remaining
        )
        if best is None or remaining < best[1]:
            best = (limit, max(0, remaining), state.reset_ms)
    return best


def rate_limit_headers(
    planned: Sequence[PlannedLimit], states: Sequence[CounterState], refused: bool = False
) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} of the tightest rpm and tpm limits."""
    headers: dict[str, str] = {}
    kinds: tuple[tuple[LimitName, str], ...] = (("rpm", "requests"), ("tpm", "tokens"))
    for name, suffix in kinds:
        tightest = _tightest(planned, states, name, refused)
        if tightest is not None:
            limit, remaining, reset_ms = tightest
            headers[f"x-ratelimit-limit-{suffix}"] = str(limit.counter.limit)
            headers[f"x-ratelimit-remaining-{suffix}"] = str(remaining)
            headers[f"x-ratelimit-reset-{suffix}"] = format_reset(reset_ms)
    return headers


_WHAT = {
    "rpm": "requests per min (RPM)",
    "tpm": "tokens per min (TPM)",
    "parallel": "parallel requests",
}


def refusal(planned: Sequence[PlannedLimit], states: Sequence[CounterState], index: int) -> APIError:
    """OpenAI's 429: type 'requests' or 'tokens', code rate_limit_exceeded, Retry-After and the headers."""
    limit, state = planned[index], states[index]
    counter = limit.counter
    what = _WHAT.get(limit.name) or f"tokens per {limits_period(counter)} (budget)"
    used = counter.limit - state.remaining
    headers = rate_limit_headers(planned, states, refused=True)
    if state.retry_ms == NEVER:
        message = (
            f"Request too large for {what} on {limit.owner}: Limit {counter.limit}, "
            f"Requested {counter.cost}. Lower max_tokens or shorten the prompt."
        )
    else:
        headers["Retry-After"] = str(max(1, math.ceil(state.retry_ms / 1000)))
        if limit.name == "parallel":
            message = (
                f"Too many parallel requests on {limit.owner}: Limit {counter.limit}, In flight {used}. "
                "Please try again when one of them finishes."
            )
        else:
            message = (
                f"Rate limit reached for {what} on {limit.owner}: Limit {counter.limit}, Used {used}, "
                f"Requested {counter.cost}. Please try again in {format_reset(state.retry_ms)}."
            )
    kind = "requests" if limit.name in ("rpm", "parallel") else "tokens"
    return APIError(429, message, type=kind, code="rate_limit_exceeded", headers=headers)


def limits_period(counter: Counter) -> str:
    """A budget period as configured: 1d, 7d, 12h."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if counter.param_ms % size == 0:
            return f"{counter.param_ms // size}{unit}"
    return format_reset(counter.param_ms)
