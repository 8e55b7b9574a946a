"""What the admin API does: create, list and revoke keys, set team limits, report usage."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from gateway.auth.errors import not_found
from gateway.auth.keys import key_id_of, key_prefix, new_key
from gateway.auth.records import KeyRecord, Limits, TeamRecord, duration_seconds
from gateway.auth.schemas import KeyCreate, KeyCreated, KeyInfo, TeamInfo, UsageReport
from gateway.auth.store import Store
from gateway.auth.usage import days_between, rows_from_counts
from gateway.errors import bad_request

logger = logging.getLogger("tandem.auth")
DEFAULT_USAGE_DAYS = 30


class AccessAdmin:
    def __init__(self, store: Store, clock: Callable[[], datetime] | None = None) -> None:
        self._store = store
        self._clock = clock or (lambda: datetime.now(UTC))

    async def create_key(self, request: KeyCreate) -> KeyCreated:
        now = self._clock()
        made = new_key()
        expires_at = (
            now + timedelta(seconds=duration_seconds(request.expires_in)) if request.expires_in else None
        )
        record = KeyRecord(
            id=made.key_id,
            name=request.name,
            team=request.team,
            models=request.models,
            limits=request.limits(),
            manage_models=request.manage_models,
            secret_sha256=made.secret_sha256,
            created_at=now,
            expires_at=expires_at,
        )
        await self._store.put_key(record)
        logger.info("created API key %s (%r, team %s)", key_prefix(record.id), record.name, record.team)
        return KeyCreated(**KeyInfo.of(record, now).model_dump(), key=made.key)

    async def list_keys(self) -> list[KeyInfo]:
        now = self._clock()
        records = sorted(await self._store.list_keys(), key=lambda r: (r.created_at, r.id))
        return [KeyInfo.of(record, now) for record in records]

    async def _record(self, reference: str) -> KeyRecord:
        key_id = key_id_of(reference)
        record = await self._store.get_key(key_id) if key_id else None
        if record is None:
            shown = key_prefix(key_id) if key_id else "that reference"  # never echo a whole key
            raise not_found(f"No API key {shown}: pass a key id, a key prefix or the key itself.")
        return record

    async def get_key(self, reference: str) -> KeyInfo:
        return KeyInfo.of(await self._record(reference), self._clock())

    async def revoke_key(self, reference: str) -> KeyInfo:
        """Revoked keys stay listed (their usage keeps a name); revoking twice changes nothing."""
        record = await self._record(reference)
        now = self._clock()
        if record.revoked_at is None:
            record.revoked_at = now
            await self._store.put_key(record)
            logger.info("revoked API key %s (%r)", key_prefix(record.id), record.name)
        return KeyInfo.of(record, now)

    async def set_team(self, name: str, limits: Limits) -> TeamInfo:
        record = TeamRecord(name=name, limits=limits, updated_at=self._clock())
        await self._store.put_team(record)
        logger.info("team %s limits: %s", name, limits.model_dump(exclude_none=True))
        return TeamInfo.of(record)

    async def get_team(self, name: str) -> TeamInfo:
        record = await self._store.get_team(name)
        if record is None:
            raise not_found(f"No limits are set for team {name!r}.")
        return TeamInfo.of(record)

    async def list_teams(self) -> list[TeamInfo]:
        return [
            TeamInfo.of(record) for record in sorted(await self._store.list_teams(), key=lambda r: r.name)
        ]

    async def usage(
        self, key: str | None, team: str | None, since: date | None, until: date | None
    ) -> UsageReport:
        """Default range: the last 30 UTC days, today included."""
        until = until or self._clock().astimezone(UTC).date()
        since = since or until - timedelta(days=DEFAULT_USAGE_DAYS - 1)
        try:
            days = days_between(since, until)
        except ValueError as exc:
            raise bad_request(str(exc), param="since") from exc
        key_id = (key_id_of(key) or key) if key else None  # 'master' / 'anonymous' are ids too
        rows = rows_from_counts(await self._store.usage_counts(days), key_id=key_id, team=team)
        return UsageReport(since=since, until=until, data=rows)
