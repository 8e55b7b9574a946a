"""What the access store keeps: limits, key records (hash only, never the secret), team records, usage."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_S = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
DEFAULT_BUDGET_PERIOD = "1d"


def duration_seconds(text: str) -> int:
    """'30d' -> 2592000. Units s, m, h, d, w; a positive whole number of them."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 12h, 1d, 7d or 2w")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _normalized_duration(text: str) -> str:
    duration_seconds(text)
    return text.strip()


Duration = Annotated[str, AfterValidator(_normalized_duration)]
# Team names end up in Redis key names, usage rows and metric labels: keep them plain.
TeamName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class Limits(BaseModel):
    """Limits of one key or one team; None means no limit of that kind."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(
        None, ge=1, description="requests per minute (token bucket, refills continuously)"
    )
    tpm: int | None = Field(
        None, ge=1, description="tokens per minute: prompt + max_tokens reserved, reconciled"
    )
    max_parallel: int | None = Field(None, ge=1, description="requests in flight at once")
    budget_tokens: int | None = Field(None, ge=1, description="tokens per budget period")
    budget_period: Duration | None = Field(
        None, description="e.g. 1d, 7d, 30d; periods are aligned to the Unix epoch (1d = a UTC day)"
    )

    @model_validator(mode="after")
    def _period_needs_budget(self) -> Limits:
        if self.budget_period is not None and self.budget_tokens is None:
            raise ValueError("budget_period needs budget_tokens")
        if self.budget_tokens is not None and self.budget_period is None:
            self.budget_period = DEFAULT_BUDGET_PERIOD
        return self

    def budget_period_s(self) -> int:
        return duration_seconds(self.budget_period or DEFAULT_BUDGET_PERIOD)


class KeyRecord(BaseModel):
    """One API key as stored. The key itself is shown once at creation; only its sha256 is kept."""

    id: str
    name: str
    team: str | None = None
    models: list[str] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    manage_models: bool = False  # may pull, create, copy and delete models (otherwise the master key only)
    secret_sha256: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def status(self, now: datetime) -> Literal["active", "revoked", "expired"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class TeamRecord(BaseModel):
    name: str
    limits: Limits = Field(default_factory=Limits)
    updated_at: datetime


class UsageRow(BaseModel):
    """Tokens and requests of one key (with its team) on one model on one UTC day."""

    date: date
    key_id: str = Field(description="a key id, or 'master' / 'anonymous' for requests without a key")
    team: str | None = None
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
