"""Access-control settings: the `auth:` config section (and TANDEM_MASTER_KEY / TANDEM_REDIS_URL)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    master_key: SecretStr | None = Field(
        None, description="turns access control on; administers keys and may call the API"
    )
    redis_url: str | None = Field(
        None, description="shared store for keys, limits and usage; none: in-process memory (one replica)"
    )
    redis_failure_mode: Literal["fail_closed", "fail_open"] = Field(
        "fail_closed",
        description="Redis unreachable: fail_closed answers 503; fail_open serves without limits and warns",
    )
    redis_timeout_s: float = Field(0.5, gt=0, le=10, description="Redis connect and per-operation timeout")
    redis_retry_s: float = Field(
        1.0, gt=0, le=60, description="after a Redis failure, requests skip it; a probe retries this often"
    )
    redis_prefix: str = Field("tandem:", min_length=1, description="prefix of every Redis key tandem writes")
    parallel_lease_s: int = Field(
        900, ge=1, description="a parallel slot whose replica died without settling frees itself after this"
    )
    usage_retention_days: int = Field(400, ge=1, description="days of usage kept")

    @field_validator("master_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # TANDEM_MASTER_KEY= (empty, as docker-compose passes an unset ${TANDEM_MASTER_KEY:-}) means off, not
        # "on with an empty key"; it arrives as "" from the file and as SecretStr("") from the environment
        empty = value == "" or (isinstance(value, SecretStr) and value.get_secret_value() == "")
        return None if empty else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(REDIS_SCHEMES):
            raise ValueError(f"must start with {', '.join(REDIS_SCHEMES)}")
        return url
