"""Quantiles estimated from cumulative histogram buckets, the way Prometheus's histogram_quantile() does."""

from __future__ import annotations

import math
from collections.abc import Sequence

Bucket = tuple[float, float]  # (upper bound `le`, cumulative count), +Inf last


def histogram_quantile(q: float, buckets: Sequence[Bucket]) -> float | None:
    """The q-quantile (0..1) of cumulative `buckets`, linearly interpolated inside the bucket it falls in.

    Like Prometheus: None (NaN there) without observations; a quantile in the +Inf bucket is the highest
    finite bound; the first bucket starts at 0 unless its bound is not positive.
    """
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    total = ordered[-1][1]
    if total <= 0:
        return None
    rank = min(max(q, 0.0), 1.0) * total
    index = next(i for i, (_, cumulative) in enumerate(ordered) if cumulative >= rank)
    if index == len(ordered) - 1:
        return ordered[-2][0]
    upper, cumulative = ordered[index]
    if index == 0:
        if upper <= 0:
            return upper
        lower, below = 0.0, 0.0
    else:
        lower, below = ordered[index - 1]
    in_bucket = cumulative - below
    if in_bucket <= 0:
        return upper
    return lower + (upper - lower) * (rank - below) / in_bucket
