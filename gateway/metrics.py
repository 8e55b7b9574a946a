"""Prometheus metrics (names in docs/metrics.md): gateway series observed per request, backend series
collected from each backend's stats() at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from backends.base import GenerationChunk
from backends.stats import LATENCY_BUCKETS_S, HistogramSnapshot
from gateway.registry import ModelManager

UNKNOWN_MODEL = "_unknown"
NO_TEAM = "none"
UNMATCHED_ROUTE = "unmatched"  # the route label of requests no route took (404, 405, refused before routing)
NO_DEPLOYMENT = "none"  # the deployment label of requests that reached no deployment


class GatewayMetrics:
    """Owns one CollectorRegistry per app (no process-global state)."""

    def __init__(self, models: ModelManager) -> None:
        disable_created_metrics()  # the *_created series only add noise to every scrape
        self.registry = CollectorRegistry()
        r, per_model = self.registry, ["model", "backend"]
        self.requests = Counter(
            "tandem_requests", "Finished API requests (/v1, /api, /tokenize, /detokenize) by route template.",
            ["model", "backend", "deployment", "status_code", "team", "route"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "tandem_request_duration_seconds", "End-to-end latency of generation requests.",
            per_model, buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.time_to_first_token = Histogram(
            "tandem_time_to_first_token_seconds", "Arrival to first generated token.",
            per_model, buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.inter_token_latency = Histogram(
            "tandem_inter_token_latency_seconds", "Gap between consecutive streamed tokens.",
            per_model, buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.time_per_output_token = Histogram(
            "tandem_time_per_output_token_seconds", "Per request: (end - first token) / (output tokens - 1).",
            per_model, buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        per_team = [*per_model, "team"]
        self.prompt_tokens = Counter(
            "tandem_prompt_tokens", "Prompt tokens of served requests.", per_team, registry=r
        )
        self.generation_tokens = Counter(
            "tandem_generation_tokens", "Generated tokens.", per_team, registry=r
        )
        self.in_flight = Gauge(
            "tandem_requests_in_flight", "Generation requests being served.", per_model, registry=r
        )
        self.client_disconnects = Counter(
            "tandem_client_disconnects",
            "Requests aborted because the client went away.",
            per_model,
            registry=r,
        )
        self.rate_limit_rejections = Counter(
            "tandem_rate_limit_rejections", "429s by the limit that refused.", ["team", "limit"], registry=r
        )
        self.upstream_errors = Counter(
            "tandem_upstream_errors", "Failed calls to a deployment.", ["model", "deployment"], registry=r
        )
        self.fallbacks = Counter(
            "tandem_fallbacks", "Requests served by a fallback.", ["model", "fallback"], registry=r
        )
        self.registry.register(BackendCollector(models))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def count_request(
        self,
        model: str,
        backend: str,
        status_code: int,
        team: str = NO_TEAM,
        deployment: str = NO_DEPLOYMENT,
        route: str = UNMATCHED_ROUTE,
    ) -> None:
        self.requests.labels(model, backend, deployment, str(status_code), team, route).inc()

    def track(
        self, model: str, backend: str, team: str, prompt_tokens: int, choices: int
    ) -> GenerationTracker:
        return GenerationTracker(self, model, backend, team, prompt_tokens, choices)


class GenerationTracker:
    """Times one API call's generation (all n choices) as its chunks pass through the gateway."""

    def __init__(
        self, metrics: GatewayMetrics, model: str, backend: str, team: str, prompt_tokens: int, choices: int
    ) -> None:
        self._metrics = metrics
        self._labels = (model, backend)
        self._team = team
        self._prompt_tokens = prompt_tokens
        self._start = time.perf_counter()
        self._first_token: float | None = None
        self._last_token = [0.0] * choices
        self._tokens = 0
        self._finished = False
        self._inter_token = metrics.inter_token_latency.labels(model, backend)  # once, not per token
        metrics.in_flight.labels(*self._labels).inc()

    def on_chunk(self, index: int, chunk: GenerationChunk) -> None:
        if not chunk.token_ids:
            return
        now = time.perf_counter()
        if self._first_token is None:
            self._first_token = now
            self._metrics.time_to_first_token.labels(*self._labels).observe(now - self._start)
        elif self._last_token[index]:
            self._inter_token.observe(now - self._last_token[index])
        self._last_token[index] = now
        self._tokens += len(chunk.token_ids)

    def finish(self, completed: bool) -> None:
        if self._finished:
            return
        self._finished = True
        m, labels, end = self._metrics, self._labels, time.perf_counter()
        m.in_flight.labels(*labels).dec()
        m.prompt_tokens.labels(*labels, self._team).inc(self._prompt_tokens)
        m.generation_tokens.labels(*labels, self._team).inc(self._tokens)
        if not completed:
            m.client_disconnects.labels(*labels).inc()
            return
        m.request_duration.labels(*labels).observe(end - self._start)
        if self._first_token is not None and self._tokens > 1:
            m.time_per_output_token.labels(*labels).observe((end - self._first_token) / (self._tokens - 1))


def _histogram(name: str, doc: str, model: str, snapshot: HistogramSnapshot) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["model"])
    cumulative, buckets = 0, []
    for bound, count in zip((*snapshot.bounds, float("inf")), snapshot.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    family.add_metric([model], buckets, snapshot.total)
    return family


class BackendCollector(Collector):
    """Reads every served model's stats() at scrape time: queue gauges, llama.cpp and engine series."""

    def __init__(self, models: ModelManager) -> None:
        self._models = models

    def collect(self) -> Iterator:
        queued = GaugeMetricFamily(
            "tandem_requests_queued", "Admitted requests waiting.", labels=["model", "backend"]
        )
        llama_queue = GaugeMetricFamily("tandem_llamacpp_queue_depth", "Requests admitted.", labels=["model"])
        llama_load = GaugeMetricFamily(
            "tandem_llamacpp_model_load_seconds", "Model load time.", labels=["model"]
        )
        llama_loaded = GaugeMetricFamily("tandem_llamacpp_models_loaded", "llama.cpp models loaded now.")
        engine_families: list = []
        loaded = 0
        for model in self._models.loaded():
            if model.backend is None:
                continue
            name, kind, stats = model.spec.name, model.backend.kind, model.backend.stats()
            queued.add_metric([name, kind], stats.waiting)
            if kind == "llamacpp":
                loaded += 1
                llama_queue.add_metric([name], stats.running + stats.waiting)
                if stats.load_seconds is not None:
                    llama_load.add_metric([name], stats.load_seconds)
            if stats.engine is not None:
                engine_families.extend(_engine_families(name, stats.engine))
        llama_loaded.add_metric([], loaded)
        yield from (queued, llama_queue, llama_load, llama_loaded, *engine_families)

    def describe(self) -> Iterator:
        return iter(())


def _engine_families(model: str, e) -> list:
    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["model"])
        family.add_metric([model], value)
        return family

    def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["model"])
        family.add_metric([model], value)
        return family

    computed = []
    if e.prompt_tokens_computed is not None:
        computed.append(counter(
            "tandem_engine_prompt_tokens_computed", "Prompt tokens run through the model (not cached).",
            e.prompt_tokens_computed,
        ))  # fmt: skip
    return [
        *computed,
        gauge("tandem_engine_requests_running", "Requests in the running batch.", e.requests_running),
        gauge("tandem_engine_requests_waiting", "Requests waiting to be scheduled.", e.requests_waiting),
        gauge("tandem_engine_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use.", e.kv_cache_usage),
        counter("tandem_engine_prefix_cache_queries", "Prompt tokens looked up.", e.prefix_cache_queries),
        counter("tandem_engine_prefix_cache_hits", "Prompt tokens found cached.", e.prefix_cache_hits),
        counter("tandem_engine_preemptions", "Sequences preempted.", e.preemptions),
        _histogram("tandem_engine_step_batch_size", "Sequences per step.", model, e.step_batch_size),
        _histogram("tandem_engine_step_tokens", "Tokens per step.", model, e.step_tokens),
        _histogram("tandem_engine_request_queue_time_seconds", "Arrival to first schedule.", model,
                   e.request_queue_time_s),
        _histogram("tandem_engine_request_prefill_time_seconds", "First schedule to first token.", model,
                   e.request_prefill_time_s),
        _histogram("tandem_engine_request_decode_time_seconds", "First token to finish.", model,
                   e.request_decode_time_s),
    ]  # fmt: skip
