"""One scrape of a prometheus_client registry, indexed by sample name: what /metrics would print, as data."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from prometheus_client.registry import CollectorRegistry

from gateway.dashboard.quantiles import Bucket


class Scrape:
    """The samples of one registry.collect(), e.g. `scrape.total("tandem_requests_total", by=("model",))`."""

    def __init__(self, samples: Iterable[tuple[str, dict[str, str], float]]) -> None:
        self._samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for name, labels, value in samples:
            self._samples[name].append((labels, value))

    @classmethod
    def of(cls, registry: CollectorRegistry) -> Scrape:
        return cls(
            (sample.name, dict(sample.labels), float(sample.value))
            for family in registry.collect()
            for sample in family.samples
        )

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        return list(self._samples.get(name, ()))

    def total(
        self, name: str, by: tuple[str, ...], where: Callable[[dict[str, str]], bool] | None = None
    ) -> dict[tuple[str, ...], float]:
        """sum by (`by`) (name), optionally over the series `where` accepts."""
        sums: dict[tuple[str, ...], float] = defaultdict(float)
        for labels, value in self._samples.get(name, ()):
            if where is None or where(labels):
                sums[tuple(labels.get(label, "") for label in by)] += value
        return dict(sums)

    def value(self, name: str, **labels: str) -> float | None:
        """The one series of `name` whose labels include `labels` (None if there is none)."""
        for series_labels, value in self._samples.get(name, ()):
            if all(series_labels.get(k) == v for k, v in labels.items()):
                return value
        return None

    def buckets(self, histogram: str, by: tuple[str, ...]) -> dict[tuple[str, ...], list[Bucket]]:
        """sum by (`by`, le) (histogram_bucket): the cumulative buckets of each group."""
        grouped: dict[tuple[str, ...], dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for labels, value in self._samples.get(f"{histogram}_bucket", ()):
            grouped[tuple(labels.get(label, "") for label in by)][float(labels["le"])] += value
        return {key: sorted(bounds.items()) for key, bounds in grouped.items()}
