"""The access layer one app holds: authenticate a request, check its model, admit it against the limits
of its key and team, and settle it at the end.

No key is cached: every request reads its key record from the store, so a revoke or an expiry is refused
at once on every replica. The one exception is opt-in: with redis_failure_mode=fail_open and Redis
unreachable, a key this process verified in the last FALLBACK_TTL_S keeps working (anything else is
refused with 503), because serving anyway is what fail_open asks for.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from gateway.auth.admission import Admission
from gateway.auth.errors import invalid_api_key, store_unavailable
from gateway.auth.keys import key_prefix, parse_key, presented_token, same_secret, secret_matches
from gateway.auth.limiter import PlannedLimit, adjustments, plan_limits, rate_limit_headers, refusal
from gateway.auth.management import AccessAdmin
from gateway.auth.memory_store import MemoryStore
from gateway.auth.principal import Principal
from gateway.auth.records import KeyRecord
from gateway.auth.settings import AuthSettings
from gateway.auth.store import CounterState, Store, StoreUnavailableError, UsageEntry
from gateway.auth.usage import field_prefix, utc_day

logger = logging.getLogger("tandem.auth")

RejectionHook = Callable[[str, str], None]  # (team or "none", limit: rpm | tpm | parallel | budget)
NO_TEAM = "none"  # the team label of keys without a team (as gateway.metrics labels it)
FALLBACK_TTL_S = 600.0
WARN_EVERY_S = 10.0
CLOSE_WAIT_S = 5.0


class Access:
    def __init__(
        self, settings: AuthSettings, store: Store, *, on_rejected: RejectionHook | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.enabled = settings.master_key is not None
        self.on_rejected = on_rejected
        self.admin = AccessAdmin(store)
        self._master = settings.master_key.get_secret_value() if settings.master_key else ""
        self._fail_open = settings.redis_failure_mode == "fail_open"
        self._background: set[asyncio.Task[None]] = set()
        self._verified: dict[str, tuple[KeyRecord, float]] = {}  # fail_open fallback only, see above
        self._last_warning = -WARN_EVERY_S

    # ---- authentication ----------------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None, x_api_key: str | None) -> Principal:
        """The caller, from `Authorization: Bearer <key>` or `x-api-key`; 401 invalid_api_key if unknown."""
        if not self.enabled:
            return Principal.anonymous()
        token = presented_token(authorization, x_api_key)
        if token is None:
            raise invalid_api_key(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' or as 'x-api-key'."
            )
        if same_secret(token, self._master):
            return Principal.master()
        parsed = parse_key(token)
        if parsed is None:
            raise invalid_api_key("Incorrect API key provided.")
        try:
            record = await self.store.get_key(parsed.key_id)
        except StoreUnavailableError as exc:
            return self._authenticate_offline(parsed.key_id, parsed.secret, exc)
        if record is None or not secret_matches(parsed.secret, record.secret_sha256):
            self._verified.pop(parsed.key_id, None)
            raise invalid_api_key(f"Incorrect API key provided: {parsed.prefix}-****.")
        status = record.status(datetime.now(UTC))
        if status != "active":
            self._verified.pop(parsed.key_id, None)
            raise invalid_api_key(f"The API key {parsed.prefix} has been {status}.")
        if self._fail_open:
            self._verified[record.id] = (record, time.monotonic())
        return Principal.of_key(record)

    def _authenticate_offline(self, key_id: str, secret: str, exc: StoreUnavailableError) -> Principal:
        cached = self._verified.get(key_id) if self._fail_open else None
        if (
            cached is not None
            and time.monotonic() - cached[1] <= FALLBACK_TTL_S
            and secret_matches(secret, cached[0].secret_sha256)
            and cached[0].status(datetime.now(UTC)) == "active"
        ):
            self._outage(f"access store unreachable ({exc}); fail_open: serving recently verified keys")
            return Principal.of_key(cached[0])
        self._outage(f"access store unreachable, refusing {key_prefix(key_id)}: {exc}", logging.ERROR)
        raise store_unavailable() from exc

    def may_use(self, principal: Principal, model_name: str, *aliases: str) -> bool:
        """Whether the key's model globs allow this model (by its name or any alias). For GET /v1/models,
        keep the models this is true of; for a request, answer 404 model_not_found when it is false."""
        return principal.may_use(model_name, *aliases)

    # ---- admission ---------------------------------------------------------------------------------------

    async def admit(self, principal: Principal, model_name: str, reserved_tokens: int) -> Admission:
        """Reserve one request and `reserved_tokens` (prompt + max_tokens) in every limit of the key and its
        team at once, or in none: 429 rate_limit_exceeded, or 503 if the store is down and fail_closed."""
        if not self.enabled or principal.key_id is None:
            return self._admission(principal, model_name, (), (), "")
        member = uuid.uuid4().hex
        try:
            team = await self.store.get_team(principal.team) if principal.team else None
            planned = plan_limits(
                principal.key_id,
                principal.limits,
                principal.team,
                team.limits if team else None,
                max(0, reserved_tokens),
                self.settings.parallel_lease_s * 1000,
            )
            if not planned:
                return self._admission(principal, model_name, (), (), member)
            reservation = await self.store.reserve([limit.counter for limit in planned], member)
        except StoreUnavailableError as exc:
            if not self._fail_open:
                self._outage(
                    f"access store unreachable, refusing requests (fail_closed): {exc}", logging.ERROR
                )
                raise store_unavailable() from exc
            self._outage(f"access store unreachable ({exc}); fail_open: serving without limits")
            return self._admission(principal, model_name, (), (), member)
        if reservation.refused is not None:
            refused = planned[reservation.refused]
            if self.on_rejected is not None:
                self.on_rejected(principal.team or NO_TEAM, refused.name)
            raise refusal(planned, reservation.states, reservation.refused)
        return self._admission(principal, model_name, planned, reservation.states, member)

    def _admission(
        self,
        principal: Principal,
        model_name: str,
        planned: Sequence[PlannedLimit],
        states: Sequence[CounterState],
        member: str,
    ) -> Admission:
        async def settle(prompt_tokens: int, completion_tokens: int) -> None:
            usage = UsageEntry(
                day=utc_day(),
                field_prefix=field_prefix(principal.usage_key, principal.team, model_name),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
            try:
                await self.store.settle(
                    adjustments(planned, states, prompt_tokens + completion_tokens), member, usage
                )
            except StoreUnavailableError as exc:
                # the counters heal by themselves (buckets refill, windows roll over, leases expire)
                self._outage(f"access store unreachable; usage not recorded: {exc}")

        return Admission(rate_limit_headers(planned, states), settle, self._background)

    def _outage(self, message: str, level: int = logging.WARNING) -> None:
        """During an outage every request would log the same line: log one per WARN_EVERY_S."""
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            logger.log(level, message)

    async def aclose(self) -> None:
        """Lets settles that outlived their request finish, then closes the store."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=CLOSE_WAIT_S)
        await self.store.aclose()


async def open_access(settings: AuthSettings, *, on_rejected: RejectionHook | None = None) -> Access:
    """Connects the store (Redis with redis_url, else in-process memory) and logs what access control does.
    A Redis that does not answer is not fatal: requests get redis_failure_mode until it does."""
    store: Store
    if settings.redis_url:
        from gateway.auth.redis_store import RedisStore

        store = RedisStore(
            settings.redis_url,
            timeout_s=settings.redis_timeout_s,
            prefix=settings.redis_prefix,
            usage_retention_days=settings.usage_retention_days,
            retry_s=settings.redis_retry_s,
        )
        try:
            await store.ping()
        except StoreUnavailableError as exc:
            outcome = "503" if settings.redis_failure_mode == "fail_closed" else "no limits (fail_open)"
            logger.warning(
                "access store not reachable at start; until it is, requests get %s: %s", outcome, exc
            )
    else:
        store = MemoryStore(usage_retention_days=settings.usage_retention_days)
    if settings.master_key is None:
        logger.info(
            "access control off (no master key): every request is allowed; usage in %s", store.description
        )
    else:
        logger.info(
            "access control on: API keys required on /v1 and /api; keys, limits and usage in %s (%s)",
            store.description,
            settings.redis_failure_mode if settings.redis_url else "no Redis",
        )
    return Access(settings, store, on_rejected=on_rejected)
