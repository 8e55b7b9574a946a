"""Request and response bodies of the admin API (also what the CLI parses)."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.auth.keys import key_prefix
from gateway.auth.records import Duration, KeyRecord, Limits, TeamName, TeamRecord, UsageRow

_GLOB = re.compile(r"[A-Za-z0-9._:/@+*?!\[\]-]+")


class KeyCreate(Limits):
    """A new key: who it is for, what it may call, and its own limits (the team's apply on top)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    team: TeamName | None = None
    models: list[str] = Field(default_factory=list, description="fnmatch globs; empty: every model")
    expires_in: Duration | None = Field(None, description="e.g. 30d; none: never expires")
    manage_models: bool = Field(
        False, description="may pull, create, copy and delete models (without it: the master key only)"
    )

    @field_validator("models")
    @classmethod
    def _check_globs(cls, globs: list[str]) -> list[str]:
        for glob in globs:
            if not _GLOB.fullmatch(glob) or glob.count("[") != glob.count("]"):
                raise ValueError(
                    f"{glob!r} is not a model glob (model-name characters with * ? and [...] only)"
                )
        return globs

    def limits(self) -> Limits:
        return Limits.model_validate(self.model_dump(include=set(Limits.model_fields)))


class KeyInfo(BaseModel):
    """A key as listings show it: its id and prefix, never its secret."""

    id: str
    prefix: str
    name: str
    team: str | None
    models: list[str]
    limits: Limits
    manage_models: bool = False
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    status: Literal["active", "revoked", "expired"]

    @classmethod
    def of(cls, record: KeyRecord, now: datetime) -> KeyInfo:
        return cls(
            id=record.id,
            prefix=key_prefix(record.id),
            name=record.name,
            team=record.team,
            models=record.models,
            limits=record.limits,
            manage_models=record.manage_models,
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            status=record.status(now),
        )


class KeyCreated(KeyInfo):
    key: str = Field(description="the API key; shown only in this response, tandem keeps only its sha256")
    enforced: bool = Field(
        True,
        description="false while access control is off (no master key): the key is stored, but every "
        "request is served without one until a master key is set",
    )


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyInfo]


class TeamInfo(BaseModel):
    name: str
    limits: Limits
    updated_at: datetime

    @classmethod
    def of(cls, record: TeamRecord) -> TeamInfo:
        return cls(name=record.name, limits=record.limits, updated_at=record.updated_at)


class TeamList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TeamInfo]


class UsageReport(BaseModel):
    object: Literal["list"] = "list"
    since: date
    until: date
    data: list[UsageRow]
