"""GET /dashboard.json: the typed snapshot the status page draws, every number from /metrics' registry."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True)  # dumped with by_alias=True: "2xx", "4xx", "5xx"


class StatusClasses(_Model):
    """Finished requests by HTTP status class (tandem_requests_total)."""

    ok: int = Field(0, alias="2xx")
    client_error: int = Field(0, alias="4xx")
    server_error: int = Field(0, alias="5xx")
    other: int = Field(0, description="1xx and 3xx")
    total: int = 0
    codes: dict[str, int] = Field(default_factory=dict, description="per status code, e.g. {'200': 4}")


class Quantiles(_Model):
    """Estimated from the histogram's buckets like histogram_quantile(); None without observations."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    count: int = 0


class Rates(_Model):
    """Per second over the last `window_s` seconds of dashboard polls; None until two polls a second apart."""

    requests: float | None = None
    prompt_tokens: float | None = None
    generation_tokens: float | None = None
    window_s: float | None = None


class RatePoint(_Model):
    ago_s: float = Field(description="seconds before this snapshot")
    requests: float
    generation_tokens: float


class ModelTraffic(_Model):
    """One model on one backend (the model and backend labels of the gateway series)."""

    model: str
    backend: str
    requests: StatusClasses
    rates: Rates
    history: list[RatePoint] = Field(description="rates between consecutive polls, oldest first")
    latency_s: Quantiles
    ttft_s: Quantiles
    prompt_tokens: int
    generation_tokens: int
    in_flight: int
    queued: int
    client_disconnects: int


class EngineModel(_Model):
    """The paged engine of one model (tandem_engine_*)."""

    model: str
    kv_cache_usage: float = Field(description="0..1, fraction of KV-cache blocks in use")
    running: int
    waiting: int
    preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    prefix_cache_hit_rate: float | None = Field(description="hits / queries (tokens); None before any")
    mean_batch_size: float | None = Field(description="sequences per engine step on average")
    queue_time_s: Quantiles


class LlamaCppModel(_Model):
    model: str
    queue_depth: int
    load_seconds: float | None


class LlamaCpp(_Model):
    models_loaded: int
    models: list[LlamaCppModel]


class Team(_Model):
    team: str
    requests: int
    rate_limited: int = Field(description="429s (tandem_rate_limit_rejections_total)")
    rate_limited_by_limit: dict[str, int] = Field(description="rpm, tpm, parallel, budget")


class LoadedModel(_Model):
    name: str
    backend: str
    aliases: list[str]
    in_use: int
    load_seconds: float
    unloads_in_s: float | None = Field(description="None: not scheduled to unload")


class Totals(_Model):
    requests: StatusClasses
    rates: Rates
    history: list[RatePoint]
    prompt_tokens: int
    generation_tokens: int
    in_flight: int
    queued: int


class DashboardSnapshot(_Model):
    version: str
    generated_at: float = Field(description="Unix time")
    poll_interval_s: float
    totals: Totals
    models: list[ModelTraffic]
    engine: list[EngineModel] = Field(description="paged models; empty without one")
    llamacpp: LlamaCpp | None = Field(description="None without a llama.cpp model loaded")
    teams: list[Team] = Field(description="empty until a request of a team or a 429")
    loaded: list[LoadedModel]
