"""`tandem bench gateway`'s results: added latency, the goals, and the printed table."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, TextIO

from bench.load import LoadResult


@dataclass
class TargetResult:
    name: str
    closed: LoadResult
    open: list[LoadResult] = field(default_factory=list)
    server_cpu_ms_per_request: float | None = None  # closed loop: the proxy's CPU time per answered request
    server_cpu_share_open: list[float | None] = field(default_factory=list)  # cores used at each rate
    load_average: list[float] = field(default_factory=list)  # after this target's phases


# ---- the report --------------------------------------------------------------------------------------------


def added_latency(results: dict[str, TargetResult], rates: list[float]) -> dict[str, dict[str, dict]]:
    """Per proxy and rate: its p50 / p99 minus the stub's own at the same rate."""
    direct = results["direct"]
    added: dict[str, dict[str, dict]] = {}
    for name, result in results.items():
        if name == "direct":
            continue
        added[name] = {}
        for rate, through, alone in zip(rates, result.open, direct.open, strict=True):
            added[name][_rate_key(rate)] = {
                q: through.latency_ms[q] - alone.latency_ms[q]
                if q in through.latency_ms and q in alone.latency_ms
                else None  # no answer at all on one side
                for q in ("p50", "p99")
            }
    return added


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def goals(results: dict[str, TargetResult], added: dict, goal_rate: float) -> dict[str, Any]:
    verdict: dict[str, Any] = {"rps_ratio_goal": 3.0, "added_p99_goal_ms": 5.0, "at_rps": goal_rate}
    tandem, litellm = results.get("tandem"), results.get("litellm")
    if tandem and litellm and litellm.closed.achieved_rps:
        ratio = tandem.closed.achieved_rps / litellm.closed.achieved_rps
        verdict |= {"rps_ratio_vs_litellm": ratio, "rps_goal_met": ratio >= 3.0}
        if tandem.server_cpu_ms_per_request and litellm.server_cpu_ms_per_request:
            # steadier than req/s on a shared machine: CPU time is not taken by other processes' load
            verdict["litellm_cpu_per_request_over_tandem"] = (
                litellm.server_cpu_ms_per_request / tandem.server_cpu_ms_per_request
            )
    at = added.get("tandem", {}).get(_rate_key(goal_rate))
    if at is not None and at["p99"] is not None and tandem is not None:
        opened = tandem.open[[_rate_key(r.offered_rps or 0) for r in tandem.open].index(_rate_key(goal_rate))]
        kept_up = opened.errors == 0 and opened.achieved_rps >= 0.95 * goal_rate
        verdict |= {
            "tandem_added_p99_ms": at["p99"],
            "tandem_kept_up": kept_up,
            "latency_goal_met": kept_up and at["p99"] <= 5.0,
        }
    return verdict


def _ms(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def print_report(
    results: dict[str, TargetResult], added: dict, verdict: dict, args: argparse.Namespace, out: TextIO
) -> None:
    w = out.write
    kind = "streaming" if args.stream else "non-streaming"
    w(f"\n{kind} chat requests, closed loop: {args.concurrency} in flight for {args.duration:g} s\n")
    w(f"{'':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'CPU ms/req':>12}\n")
    for name, r in results.items():
        c = r.closed
        w(
            f"{name:<10}{c.achieved_rps:>10.0f}{_ms(c.latency_ms.get('p50')):>10}"
            f"{_ms(c.latency_ms.get('p99')):>10}{c.errors:>8}{_ms(r.server_cpu_ms_per_request):>12}\n"
        )
    w(f"\nopen loop: each rate offered for {args.open_duration:g} s; added = through the proxy − direct\n")
    w(
        f"{'':<10}{'offered':>9}{'achieved':>10}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'+p99 ms':>9}"
        f"{'errors':>8}{'cores':>7}\n"
    )
    for name, r in results.items():
        for opened, share in zip(r.open, r.server_cpu_share_open, strict=True):
            rate = _rate_key(opened.offered_rps or 0)
            extra = added.get(name, {}).get(rate, {})
            w(
                f"{name:<10}{rate:>9}{opened.achieved_rps:>10.0f}{_ms(opened.latency_ms.get('p50')):>9}"
                f"{_ms(opened.latency_ms.get('p99')):>9}{_ms(extra.get('p50')):>9}{_ms(extra.get('p99')):>9}"
                f"{opened.errors:>8}{_ms(share):>7}\n"
            )
    w("\n")
    if "rps_ratio_vs_litellm" in verdict:
        met = "met" if verdict["rps_goal_met"] else "MISSED"
        w(f"goal req/s >= 3x LiteLLM's: {verdict['rps_ratio_vs_litellm']:.2f}x ({met})\n")
        if "litellm_cpu_per_request_over_tandem" in verdict:
            ratio = verdict["litellm_cpu_per_request_over_tandem"]
            w(f"CPU time per request, LiteLLM's / tandem's: {ratio:.2f}x\n")
    if "tandem_added_p99_ms" in verdict:
        met = "met" if verdict["latency_goal_met"] else "MISSED"
        kept = "" if verdict["tandem_kept_up"] else ", tandem did not keep up with the offered rate"
        w(f"goal added p99 <= 5 ms at {verdict['at_rps']:g} RPS: {verdict['tandem_added_p99_ms']:.2f} ms "
          f"({met}{kept})\n")  # fmt: skip
