"""The metrics registry (one scrape, the numbers /metrics exports) → the typed dashboard snapshot."""

from __future__ import annotations

import time
from collections import defaultdict

from gateway import __version__
from gateway.dashboard.history import TOTAL, Counters, Key, RateHistory
from gateway.dashboard.quantiles import Bucket, histogram_quantile
from gateway.dashboard.samples import Scrape
from gateway.dashboard.schema import (
    DashboardSnapshot,
    EngineModel,
    LlamaCpp,
    LlamaCppModel,
    LoadedModel,
    ModelTraffic,
    Quantiles,
    StatusClasses,
    Team,
    Totals,
)
from gateway.metrics import NO_TEAM
from gateway.registry import ManagedModel

PER_MODEL = ("model", "backend")
POLL_INTERVAL_S = 2.0
_CLASSES = {"2": "ok", "4": "client_error", "5": "server_error"}


def quantiles(buckets: list[Bucket] | None, levels: tuple[float, ...] = (0.5, 0.95, 0.99)) -> Quantiles:
    if not buckets:
        return Quantiles()
    values = {f"p{round(q * 100)}": histogram_quantile(q, buckets) for q in levels}
    return Quantiles(**values, count=int(buckets[-1][1]))


def mean(scrape: Scrape, histogram: str, model: str) -> float | None:
    count = scrape.value(f"{histogram}_count", model=model)
    return (scrape.value(f"{histogram}_sum", model=model) or 0.0) / count if count else None


def status_classes(codes: dict[str, float]) -> StatusClasses:
    counts: dict[str, int] = defaultdict(int)
    for code, value in codes.items():
        counts[_CLASSES.get(code[:1], "other")] += int(value)
    by_code = {code: int(value) for code, value in sorted(codes.items()) if value}
    return StatusClasses(**counts, total=sum(by_code.values()), codes=by_code)


def counters(scrape: Scrape) -> dict[Key, Counters]:
    """What the rates are computed from: per (model, backend), and their sum under TOTAL."""
    requests = scrape.total("tandem_requests_total", PER_MODEL)
    prompt = scrape.total("tandem_prompt_tokens_total", PER_MODEL)
    generated = scrape.total("tandem_generation_tokens_total", PER_MODEL)
    keys = {*requests, *prompt, *generated}
    result: dict[Key, Counters] = {
        (model, backend): Counters(
            requests.get((model, backend), 0.0),
            prompt.get((model, backend), 0.0),
            generated.get((model, backend), 0.0),
        )
        for model, backend in keys
    }
    result[TOTAL] = Counters(sum(requests.values()), sum(prompt.values()), sum(generated.values()))
    return result


def build_snapshot(
    scrape: Scrape, history: RateHistory, loaded: list[ManagedModel], now: float | None = None
) -> DashboardSnapshot:
    """Records this scrape's counters in `history`, then reads every panel from the scrape."""
    reading = history.record(time.monotonic() if now is None else now, counters(scrape))
    codes: dict[Key, dict[str, float]] = defaultdict(dict)
    for (model, backend, code), value in scrape.total(
        "tandem_requests_total", (*PER_MODEL, "status_code")
    ).items():
        codes[(model, backend)][code] = value
    latency = scrape.buckets("tandem_request_duration_seconds", PER_MODEL)
    ttft = scrape.buckets("tandem_time_to_first_token_seconds", PER_MODEL)
    in_flight = scrape.total("tandem_requests_in_flight", PER_MODEL)
    queued = scrape.total("tandem_requests_queued", PER_MODEL)
    disconnects = scrape.total("tandem_client_disconnects_total", PER_MODEL)
    rows = sorted(key for key in {*reading.counters, *latency, *in_flight, *queued} if key != TOTAL)
    models = [
        ModelTraffic(
            model=model,
            backend=backend,
            requests=status_classes(codes.get((model, backend), {})),
            rates=history.rates(reading, (model, backend)),
            history=history.points(reading, (model, backend)),
            latency_s=quantiles(latency.get((model, backend))),
            ttft_s=quantiles(ttft.get((model, backend))),
            prompt_tokens=int(reading.get((model, backend)).prompt_tokens),
            generation_tokens=int(reading.get((model, backend)).generation_tokens),
            in_flight=int(in_flight.get((model, backend), 0)),
            queued=int(queued.get((model, backend), 0)),
            client_disconnects=int(disconnects.get((model, backend), 0)),
        )
        for model, backend in rows
    ]
    all_codes: dict[str, float] = defaultdict(float)
    for per_code in codes.values():
        for code, value in per_code.items():
            all_codes[code] += value
    totals = Totals(
        requests=status_classes(all_codes),
        rates=history.rates(reading, TOTAL),
        history=history.points(reading, TOTAL),
        prompt_tokens=int(reading.get(TOTAL).prompt_tokens),
        generation_tokens=int(reading.get(TOTAL).generation_tokens),
        in_flight=int(sum(in_flight.values())),
        queued=int(sum(queued.values())),
    )
    return DashboardSnapshot(
        version=__version__,
        generated_at=time.time(),
        poll_interval_s=POLL_INTERVAL_S,
        totals=totals,
        models=models,
        engine=engine_panel(scrape),
        llamacpp=llamacpp_panel(scrape),
        teams=teams_panel(scrape),
        loaded=[loaded_model(m) for m in loaded],
    )


def engine_panel(scrape: Scrape) -> list[EngineModel]:
    queue_time = scrape.buckets("tandem_engine_request_queue_time_seconds", ("model",))
    panels = []
    for labels, usage in scrape.series("tandem_engine_kv_cache_usage_ratio"):
        model = labels["model"]

        def value(name: str, model: str = model) -> int:
            return int(scrape.value(name, model=model) or 0)

        queries, hits = (
            value("tandem_engine_prefix_cache_queries_total"),
            value("tandem_engine_prefix_cache_hits_total"),
        )
        panels.append(
            EngineModel(
                model=model,
                kv_cache_usage=usage,
                running=value("tandem_engine_requests_running"),
                waiting=value("tandem_engine_requests_waiting"),
                preemptions=value("tandem_engine_preemptions_total"),
                prefix_cache_queries=queries,
                prefix_cache_hits=hits,
                prefix_cache_hit_rate=hits / queries if queries else None,
                mean_batch_size=mean(scrape, "tandem_engine_step_batch_size", model),
                queue_time_s=quantiles(queue_time.get((model,))),
            )
        )
    return sorted(panels, key=lambda panel: panel.model)


def llamacpp_panel(scrape: Scrape) -> LlamaCpp | None:
    depth = scrape.series("tandem_llamacpp_queue_depth")
    if not depth:
        return None
    return LlamaCpp(
        models_loaded=int(scrape.value("tandem_llamacpp_models_loaded") or 0),
        models=sorted(
            (
                LlamaCppModel(
                    model=labels["model"],
                    queue_depth=int(value),
                    load_seconds=scrape.value("tandem_llamacpp_model_load_seconds", model=labels["model"]),
                )
                for labels, value in depth
            ),
            key=lambda row: row.model,
        ),
    )


def teams_panel(scrape: Scrape) -> list[Team]:
    requests = scrape.total("tandem_requests_total", ("team",))
    rejections = scrape.total("tandem_rate_limit_rejections_total", ("team", "limit"))
    if set(requests) <= {(NO_TEAM,)} and not any(rejections.values()):
        return []  # no team has sent anything yet: nothing to compare
    teams = sorted({team for (team,) in requests} | {team for team, _ in rejections})
    return [
        Team(
            team=team,
            requests=int(requests.get((team,), 0)),
            rate_limited=int(sum(v for (t, _), v in rejections.items() if t == team)),
            rate_limited_by_limit={
                limit: int(v) for (t, limit), v in sorted(rejections.items()) if t == team
            },
        )
        for team in teams
    ]


def loaded_model(model: ManagedModel) -> LoadedModel:
    expires = model.expires_at
    return LoadedModel(
        name=model.spec.name,
        backend=model.backend.kind if model.backend is not None else model.spec.backend,
        aliases=list(model.spec.aliases),
        in_use=model.in_use,
        load_seconds=model.load_seconds,
        unloads_in_s=max(expires - time.monotonic(), 0.0) if expires is not None else None,
    )
