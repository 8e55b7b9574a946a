"""`tandem bench serve`'s table and the goals of issue 15, judged on tandem's dev profile."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from bench.serve import ModelResult, PeerResult
    from bench.serve_client import LevelResult

TANDEM = "tandem-dev"
GOAL_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class Goal:
    goal: str
    value: float | None  # None: a figure it needs was not measured in this run
    target: str
    met: bool | None


def _level(peer: PeerResult | None, concurrency: int) -> LevelResult | None:
    if peer is None:
        return None
    return next((level for level in peer.levels if level.concurrency == concurrency), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def goals(result: ModelResult) -> list[dict[str, Any]]:
    """The issue's goals for tandem's dev profile, where this run measured what each needs."""
    peers = {p.peer: p for p in result.peers}
    tandem = peers.get(TANDEM)
    at8, at1 = _level(tandem, GOAL_CONCURRENCY), _level(tandem, 1)
    cpp8 = _level(peers.get("llama-server"), GOAL_CONCURRENCY)
    lost = at8.cut + at8.failed if at8 is not None else None
    vs_cpp = _ratio(at8.aggregate_tok_s if at8 else None, cpp8.aggregate_tok_s if cpp8 else None)
    vs_raw = _ratio(at1.stream_decode_tok_s if at1 else None, result.raw.decode_tok_s if result.raw else None)
    itl = _ratio(at8.itl_ms.get("p99") if at8 else None, at1.itl_ms.get("p50") if at1 else None)
    found = [
        Goal(f"streams cut or failed at {GOAL_CONCURRENCY}", lost, "0", None if lost is None else lost == 0),
        Goal(f"aggregate tok/s at {GOAL_CONCURRENCY} / llama-server's", vs_cpp, ">= 0.9",
             None if vs_cpp is None else vs_cpp >= 0.9),
        Goal("1-stream decode tok/s / raw llama-cpp-python's", vs_raw, ">= 0.95",
             None if vs_raw is None else vs_raw >= 0.95),
        Goal(f"ITL p99 at {GOAL_CONCURRENCY} / 1-stream ITL p50", itl, "<= 2",
             None if itl is None else itl <= 2),
    ]  # fmt: skip
    return [asdict(g) for g in found]


def _ms(values: dict[str, float], key: str) -> str:
    return f"{values[key]:.1f}" if key in values else "-"


def print_report(
    args: argparse.Namespace,
    results: list[ModelResult],
    verdicts: dict[str, list[dict[str, Any]]],
    out: TextIO,
) -> None:
    for result in results:
        out.write(f"\n{result.model}: streaming chats of {args.max_tokens} tokens, {args.threads} threads, "
                  f"{args.context} context per stream, {args.rounds} stream(s) per client\n\n")  # fmt: skip
        out.write(f"{'server':<25}{'N':>4}{'tok/s':>9}{'stream':>9}{'TTFT p50':>10}{'p99':>8}"
                  f"{'ITL p50':>9}{'p99':>7}{'ok':>5}{'cut':>5}{'fail':>5}\n")  # fmt: skip
        if result.raw is not None:
            raw = result.raw
            out.write(f"{'raw llama-cpp-python':<25}{1:>4}{raw.decode_tok_s:>9.1f}{raw.decode_tok_s:>9.1f}"
                      f"{raw.ttft_ms:>10.1f}{'-':>8}{raw.itl_ms:>9.1f}{'-':>7}\n")  # fmt: skip
        for peer in result.peers:
            for level in peer.levels:
                ttft, itl = level.ttft_ms, level.itl_ms
                out.write(f"{peer.peer:<25}{level.concurrency:>4}{level.aggregate_tok_s:>9.1f}"
                          f"{level.stream_decode_tok_s:>9.1f}{_ms(ttft, 'p50'):>10}{_ms(ttft, 'p99'):>8}"
                          f"{_ms(itl, 'p50'):>9}{_ms(itl, 'p99'):>7}"
                          f"{level.ok:>5}{level.cut:>5}{level.failed:>5}\n")  # fmt: skip
        out.write("\n  tok/s: all streams' output tokens / wall time; stream: a full stream's decode tok/s "
                  "(median); TTFT, ITL in ms\n")  # fmt: skip
        for goal in verdicts.get(result.model, []):
            value = "not measured" if goal["value"] is None else f"{goal['value']:.2f}"
            mark = {True: "met", False: "MISSED", None: "-"}[goal["met"]]
            out.write(f"  goal: {goal['goal']}: {value} (target {goal['target']}): {mark}\n")
