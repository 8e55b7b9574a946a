"""`tandem bench gateway`: the front door's overhead, side by side with LiteLLM's proxy.

One stub upstream (bench/stub_upstream.py) answers every chat request with a fixed short answer. The same
load is sent to it directly, through tandem (auth on: TANDEM_MASTER_KEY set, requests carry an API key
with generous rpm / tpm / parallel limits, so every limit is checked and settled) and through LiteLLM's
proxy (`litellm --config`, master key on, no database, no callbacks, one worker), one after the other:

- closed loop: requests/s at a fixed concurrency (and the proxy's CPU time per request);
- open loop: latency p50/p99 at fixed offered rates, with the rate achieved and the errors.

Added latency = a percentile through a proxy − the same percentile direct, at the same rate.
The load generator runs in this process (never in a server's); with 2+ cores the servers under test are
pinned to one core and this process and the stub to another, the same for both proxies.
LiteLLM's proxy runs from its own virtualenv (.cache/bench-litellm/, created on first use).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import httpx

from bench.environment import describe_environment
from bench.gateway_report import TargetResult, added_latency, goals, print_report
from bench.gateway_servers import (
    DEFAULT_LITELLM_VENV,
    MODEL,
    Proxy,
    Server,
    start_litellm,
    start_stub,
    start_tandem,
)
from bench.load import Target, closed_loop, open_loop, open_session

PROMPT = "Say hello in five words."


# ---- arguments ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tandem bench gateway", description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=32, help="closed loop: requests in flight")
    p.add_argument("--duration", type=float, default=10.0, help="closed loop: seconds measured")
    p.add_argument(
        "--rates", default="50,500", help="open loop: offered requests/s, comma-separated (default 50,500)"
    )
    p.add_argument("--open-duration", type=float, default=10.0, help="open loop: seconds at each rate")
    p.add_argument("--warmup", type=float, default=2.0, help="closed-loop seconds before measuring")
    p.add_argument("--goal-rate", type=float, default=500.0, help="the rate the added-p99 goal is judged at")
    p.add_argument("--stream", action="store_true", help="streaming chat requests (SSE) instead of unary")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy (stub and tandem only)")
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and load generator to cores")
    p.add_argument(
        "--litellm-venv", type=Path, default=DEFAULT_LITELLM_VENV, help="virtualenv of LiteLLM's proxy"
    )
    p.add_argument(
        "--log-level", default="warning", help="log level of both proxies (warning: no access log lines)"
    )
    p.add_argument("--keep-logs", type=Path, default=None, help="copy the servers' logs into this folder")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    args.rates = [float(r) for r in str(args.rates).split(",") if r.strip()]
    return args


# ---- measuring ---------------------------------------------------------------------------------------------


def request_body(args: argparse.Namespace) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": args.max_tokens,
    }
    if args.stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body).encode()


def check_answer(target: Target) -> None:
    """One request before measuring: a proxy that cannot answer is an error, not a benchmark figure."""
    response = httpx.post(target.url, content=target.body, headers=target.headers, timeout=30)
    if response.status_code != 200 or "stub" not in response.text:
        raise RuntimeError(f"{target.name}: {response.status_code} {response.text[:500]}")


async def measure(target: Target, args: argparse.Namespace, server: Server | None) -> TargetResult:
    def cpu() -> float | None:
        return server.cpu_seconds() if server is not None else None

    max_connections = max(args.concurrency, 1024)
    async with open_session(max_connections) as session:
        if args.warmup > 0:
            await closed_loop(session, target, args.concurrency, args.warmup)
        before = cpu()
        closed = await closed_loop(session, target, args.concurrency, args.duration)
        after = cpu()
        result = TargetResult(target.name, closed)
        if before is not None and after is not None and closed.ok:
            result.server_cpu_ms_per_request = 1000 * (after - before) / closed.ok
        for rate in args.rates:
            before = cpu()
            opened = await open_loop(session, target, rate, args.open_duration)
            after = cpu()
            result.open.append(opened)
            share = (after - before) / opened.elapsed_s if before is not None and after is not None else None
            result.server_cpu_share_open.append(share)
    result.load_average = [round(x, 2) for x in os.getloadavg()]
    return result


def run_target(target: Target, args: argparse.Namespace, server: Server | None, out: TextIO) -> TargetResult:
    check_answer(target)
    out.write(f"measuring {target.name} ...\n")
    out.flush()
    return asyncio.run(measure(target, args, server))


def chat_url(base_url: str) -> str:
    return f"{base_url}/v1/chat/completions"


def proxy_target(name: str, proxy: Proxy, body: bytes, stream: bool) -> Target:
    headers = {"content-type": "application/json", "authorization": f"Bearer {proxy.api_key}"}
    return Target(name, chat_url(proxy.server.base_url), body, headers, stream)


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """This process (the load generator) on `cpus` while measuring; its old affinity back after."""
    if not cpus:
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def placement(no_pin: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """(cores of the proxies, cores of the stub and the load generator, a sentence saying so)."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if no_pin or len(available) < 2:
        return None, None, "not pinned: every process may run on every core"
    server, client = {available[0]}, {available[1]}
    return (
        server,
        client,
        (
            f"proxy under test pinned to core {available[0]}; load generator and stub pinned to core "
            f"{available[1]} (sched_setaffinity, as taskset -c does)"
        ),
    )


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _memory() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "unknown"


# ---- main --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per set-up request
    if args.goal_rate not in args.rates:
        args.rates.append(args.goal_rate)
    environment = describe_environment(argv, "tandem bench gateway", with_torch=False)
    environment |= {
        "memory": _memory(),
        "load_average_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "tandem": _version("tandem"),
        "litellm (tandem's)": _version("litellm"),
        "uvicorn": _version("uvicorn"),
        "fastapi": _version("fastapi"),
        "aiohttp (load generator)": _version("aiohttp"),
    }
    server_cpus, client_cpus, placed = placement(args.no_pin)
    body = request_body(args)
    results: dict[str, TargetResult] = {}
    proxies: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tandem-bench-gateway-") as tmp:
        workdir = Path(tmp)
        stub = start_stub(workdir, client_cpus)
        running: list[Server] = [stub]
        try:
            upstream = f"{stub.base_url}/v1"
            with pinned(client_cpus):
                direct = Target("direct", chat_url(stub.base_url), body, {"content-type": "application/json"})
                direct.stream = args.stream
                results["direct"] = run_target(direct, args, stub, out)
                tandem = start_tandem(workdir, upstream, args.log_level, server_cpus)
                running.append(tandem.server)
                results["tandem"] = run_target(
                    proxy_target("tandem", tandem, body, args.stream), args, tandem.server, out
                )
                proxies["tandem"] = tandem.describe
                tandem.server.stop()
                if not args.no_litellm:
                    litellm = start_litellm(workdir, args.litellm_venv, upstream, args.log_level, server_cpus)
                    running.append(litellm.server)
                    results["litellm"] = run_target(
                        proxy_target("litellm", litellm, body, args.stream), args, litellm.server, out
                    )
                    proxies["litellm"] = litellm.describe
                    environment["litellm (proxy)"] = litellm.describe["versions"].get("litellm", "unknown")
                    litellm.server.stop()
        finally:
            for server in running:
                server.stop()
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for server in running:
                    if server.log_path.exists():
                        (args.keep_logs / server.log_path.name).write_bytes(server.log_path.read_bytes())
    environment["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    added = added_latency(results, args.rates)
    verdict = goals(results, added, args.goal_rate)
    print_report(results, added, verdict, args, out)
    out.write(f"\n{placed}; load average before {environment['load_average_before']}, "
              f"after {environment['load_average_after']}\n")  # fmt: skip
    if args.json is not None:
        record = {
            "environment": environment,
            "settings": {
                "stream": args.stream,
                "concurrency": args.concurrency,
                "duration_s": args.duration,
                "rates": args.rates,
                "open_duration_s": args.open_duration,
                "warmup_s": args.warmup,
                "max_tokens": args.max_tokens,
                "request": json.loads(body),
                "placement": placed,
            },
            "proxies": proxies,
            "results": {name: asdict(result) for name, result in results.items()},
            "added_latency_ms": added,
            "goals": verdict,
            "notes": [
                "the load generator (aiohttp, one asyncio loop) runs in the benchmark's own process and "
                "shares the machine's cores with the servers and with whatever else runs there",
                "open-loop latency is measured from when each request was due (no coordinated omission)",
                "tandem's requests carry an API key with rpm/tpm/parallel limits; LiteLLM's the master key "
                "(virtual keys need its database)",
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
