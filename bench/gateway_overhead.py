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
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml

from bench.environment import describe_environment
from bench.load import LoadResult, Target, closed_loop, open_loop, open_session

REPO = Path(__file__).resolve().parents[1]
LITELLM_VERSION = "1.106.2"
DEFAULT_LITELLM_VENV = REPO / ".cache" / "bench-litellm"
MODEL = "stub"
PROMPT = "Say hello in five words."
START_TIMEOUT_S = 240.0


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


# ---- processes ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    base_url: str
    process: subprocess.Popen
    log_path: Path
    command: list[str]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def cpu_seconds(self) -> float | None:
        return process_tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def process_tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its descendants (Linux /proc; None elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, stack, seen = 0.0, [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            if current == pid:
                return None
    return total


def start_server(
    name: str, command: list[str], env: dict[str, str], workdir: Path, port: int, cpus: set[int] | None
) -> Server:
    log_path = workdir / f"{name}.log"

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, preexec_fn=pin
        )
    return Server(name, f"http://127.0.0.1:{port}", process, log_path, command)


def wait_ready(server: Server, path: str, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.base_url + path, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{server.name} did not become ready in {timeout_s:.0f} s:\n{server.log_tail()}")


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_", "LITELLM_", "DATABASE_URL"))}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # offline: no price list fetched at import
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_stub(workdir: Path, cpus: set[int] | None) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "bench.stub_upstream", "--port", str(port)]
    server = start_server("stub", command, base_env(), workdir, port, cpus)
    wait_ready(server, "/health", 30)
    return server


@dataclass
class Proxy:
    server: Server
    api_key: str  # what the load generator sends
    describe: dict[str, Any]  # command, configuration and version, for the report


def start_tandem(workdir: Path, upstream: str, log_level: str, cpus: set[int] | None) -> Proxy:
    master = "sk-tandem-bench-" + secrets.token_hex(8)
    config = {
        "profile": "bench",
        "profiles": {
            "bench": {
                "models": [
                    {"name": MODEL, "backend": "remote", "remote": {"api_base": upstream, "model": MODEL}}
                ]
            }
        },
    }
    config_path = workdir / "tandem.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config_path),
        "--port",
        str(port),
    ]
    env = base_env() | {
        "TANDEM_MASTER_KEY": master,
        "TANDEM_HOME": str(workdir / "tandem-home"),
        "TANDEM_LOG_LEVEL": log_level,
    }
    server = start_server("tandem", command, env, workdir, port, cpus)
    wait_ready(server, "/health")
    limits = {"rpm": 100_000_000, "tpm": 10**12, "max_parallel": 100_000}
    response = httpx.post(
        f"{server.base_url}/admin/keys",
        json={"name": "bench", **limits},
        headers={"Authorization": f"Bearer {master}"},
        timeout=10,
    )
    if response.status_code != 201:
        server.stop()
        raise RuntimeError(f"creating tandem's API key failed: {response.status_code} {response.text}")
    describe = {
        "command": "tandem serve --config tandem.yaml --port N",
        "config": config,
        "env": {"TANDEM_MASTER_KEY": "(set)", "TANDEM_LOG_LEVEL": log_level},
        "api_key_limits": limits,
        "server": "one process, uvicorn on asyncio's default loop (no uvloop / httptools installed)",
    }
    return Proxy(server, response.json()["key"], describe)


def ensure_litellm_venv(venv: Path, out: TextIO | None = None) -> Path:
    """LiteLLM's proxy (with its `proxy` extras) in its own virtualenv; created on first use."""
    out = out or sys.stderr
    python = venv / "bin" / "python"
    if _venv_litellm_version(venv) != LITELLM_VERSION:
        out.write(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} (first use; a few minutes)\n")
        out.flush()
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True
        )
    return venv / "bin" / "litellm"


def _venv_litellm_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists() or not (venv / "bin" / "litellm").exists():
        return None
    probe = "import importlib.metadata as m; print(m.version('litellm'))"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def _venv_package_versions(venv: Path, names: list[str]) -> dict[str, str]:
    probe = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'not installed'\n"
        "print(json.dumps(out))"
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe, *names], capture_output=True, text=True
    )
    return json.loads(result.stdout) if result.returncode == 0 else {}


def start_litellm(workdir: Path, venv: Path, upstream: str, log_level: str, cpus: set[int] | None) -> Proxy:
    binary = ensure_litellm_venv(venv)
    master = "sk-litellm-bench-" + secrets.token_hex(8)
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {"model": f"openai/{MODEL}", "api_base": upstream, "api_key": "unused"},
            }
        ],
        "general_settings": {"master_key": master},
    }
    config_path = workdir / "litellm.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    command = [str(binary), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--num_workers", "1"]
    env = base_env() | {"LITELLM_LOG": log_level.upper()}
    server = start_server("litellm", command, env, workdir, port, cpus)
    wait_ready(server, "/health/liveliness")
    versions = _venv_package_versions(venv, ["litellm", "uvicorn", "uvloop", "httptools", "fastapi"])
    shown = {**config, "general_settings": {"master_key": "(set)"}}
    describe = {
        "command": "litellm --config litellm.yaml --host 127.0.0.1 --port N --num_workers 1",
        "config": shown,
        "env": {"LITELLM_LOG": log_level.upper(), "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        "versions": versions,
        "server": "one process (num_workers 1), no database (no DATABASE_URL), no callbacks, master key on; "
        "uvicorn on uvloop, as litellm's CLI picks when uvloop is installed",
    }
    return Proxy(server, master, describe)


# ---- measuring ---------------------------------------------------------------------------------------------


@dataclass
class TargetResult:
    name: str
    closed: LoadResult
    open: list[LoadResult] = field(default_factory=list)
    server_cpu_ms_per_request: float | None = None  # closed loop: the proxy's CPU time per answered request
    server_cpu_share_open: list[float | None] = field(default_factory=list)  # cores used at each rate
    load_average: list[float] = field(default_factory=list)  # after this target's phases


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
