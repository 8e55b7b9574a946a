"""Process-wide settings (not per model): TANDEM_* environment variables, then CLI flags on top."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.auth.settings import AuthSettings
from gateway.durations import parse_keep_alive


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TANDEM_", extra="ignore")

    config: Path | None = Field(None, description="YAML config file; default config/tandem.yaml")
    profile: str | None = Field(None, description="profile to serve; default the file's `profile:` key")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    home: Path = Field(Path("~/.cache/tandem"), description="where tandem keeps generated models")
    max_request_bytes: int = Field(4 * 1024 * 1024, gt=0, description="larger bodies get 413")
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a connection whose request headers are not all in by then is closed"
    )
    max_queued_requests: int = Field(
        64, ge=0, description="per model, requests waiting behind the running ones; beyond it 503"
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 503 when a queue is full")
    llamacpp_threads: int | None = Field(None, gt=0, description="llama.cpp threads; default all cores")
    llamacpp_parallel: int = Field(
        4, ge=1, le=256, description="llama.cpp requests decoded at once, per model (unless it sets parallel)"
    )
    keep_alive: str = Field("5m", description="default time a model stays loaded after its last request")
    max_loaded_models: int = Field(3, gt=0, description="models loaded at once; the LRU idle one is evicted")
    memory_budget_gb: float | None = Field(
        None, gt=0, description="models are unloaded or refused before loading past this; default 80% of RAM"
    )
    pull_quota_gb: float | None = Field(
        None, gt=0, description="disk all pulled models may take under home; default: the free disk"
    )
    responses_retention_s: float = Field(
        30 * 86400, gt=0, description="how long /v1/responses keeps a stored response (store: true)"
    )
    drain_s: float = Field(
        30, ge=0, le=3600, description="on SIGTERM, how long running requests may finish before streams end"
    )

    master_key: SecretStr | None = Field(
        None, description="turns access control on (overrides auth.master_key)"
    )
    redis_url: str | None = Field(
        None, description="shared store for keys, limits, usage (overrides auth.redis_url)"
    )
    redis_failure_mode: Literal["fail_closed", "fail_open"] | None = Field(
        None, description="what to do when Redis is down (overrides auth.redis_failure_mode)"
    )
    metrics_open: bool = Field(
        False,
        description="with access control on, serve /metrics and /dashboard(.json) without a key (for a "
        "Prometheus without credentials); off, they need the master key",
    )
    metrics_require_key: bool | None = Field(
        None, description="replaced by metrics_open: true is the default now, false is refused"
    )

    def auth_settings(self, configured: AuthSettings) -> AuthSettings:
        """The config file's `auth:` section with TANDEM_* environment values taking precedence."""
        overrides = {
            name: getattr(self, name)
            for name in ("master_key", "redis_url", "redis_failure_mode")
            if getattr(self, name) is not None
        }
        return AuthSettings.model_validate({**configured.model_dump(), **overrides})

    @field_validator("metrics_require_key")
    @classmethod
    def _replaced_by_metrics_open(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value and info.data.get("metrics_open"):
            raise ValueError("contradicts TANDEM_METRICS_OPEN=true; drop TANDEM_METRICS_REQUIRE_KEY")
        if value is False:  # it used to open the metrics: say what does that now instead of ignoring it
            raise ValueError(
                "replaced by TANDEM_METRICS_OPEN: with access control on, /metrics and /dashboard need the "
                "master key by default; TANDEM_METRICS_OPEN=true serves them without a key"
            )
        return value

    @field_validator("keep_alive")
    @classmethod
    def _check_keep_alive(cls, value: str) -> str:
        parse_keep_alive(value)
        return value

    def resolved_home(self) -> Path:
        return self.home.expanduser()
