"""Usage counters: one hash per UTC day, a field per (key, team, model, metric), turned into typed rows."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

from gateway.auth.records import UsageRow

MASTER = "master"  # the key id usage is recorded under for the master key
ANONYMOUS = "anonymous"  # ... and for requests when access control is off
MAX_DAYS = 366  # longest range one query reads (one hash per day)
_SEP = "\x1f"  # unit separator: cannot occur in key ids, team names or model names
_METRICS = {"r": "requests", "p": "prompt_tokens", "c": "completion_tokens"}


def field_prefix(key_id: str, team: str | None, model: str) -> str:
    """The store appends one metric letter: r (requests), p (prompt tokens), c (completion tokens)."""
    return _SEP.join((key_id, team or "", model, ""))


def utc_day(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).date().isoformat()


def days_between(since: date, until: date) -> list[str]:
    if until < since:
        raise ValueError("until is before since")
    count = (until - since).days + 1
    if count > MAX_DAYS:
        raise ValueError(f"a usage query covers at most {MAX_DAYS} days")
    return [(since + timedelta(days=i)).isoformat() for i in range(count)]


def rows_from_counts(
    counts: Mapping[str, Mapping[str, int]], key_id: str | None = None, team: str | None = None
) -> list[UsageRow]:
    """Rows per (day, key, team, model), optionally only one key's or one team's, in a stable order."""
    rows: dict[tuple[str, str, str, str], UsageRow] = {}
    for day, fields in counts.items():
        for name, value in fields.items():
            parts = name.split(_SEP)
            if len(parts) != 4 or parts[3] not in _METRICS:
                continue  # not ours; never fail a whole report over one odd field
            row_key, row_team, model, metric = parts
            if (key_id is not None and row_key != key_id) or (team is not None and row_team != team):
                continue
            row = rows.setdefault(
                (day, row_key, row_team, model),
                UsageRow(date=date.fromisoformat(day), key_id=row_key, team=row_team or None, model=model),
            )
            setattr(row, _METRICS[metric], getattr(row, _METRICS[metric]) + int(value))
    for row in rows.values():
        row.total_tokens = row.prompt_tokens + row.completion_tokens
    return [rows[k] for k in sorted(rows)]
