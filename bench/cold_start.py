"""`python -m bench.cold_start`: from `tandem serve` (as `make serve` runs it, no config file: the built-in
demo model, already in the cache) to the first streamed token of a chat completion, per profile. With
--make, from `make serve` itself in this checkout (its config/tandem.yaml: the same demo model).

Each run starts a fresh server process in an empty directory with a free port, sends the chat request as
soon as the port accepts connections (a model that is not preloaded loads on that first request), and
stops the server once the first token has arrived. Reported per profile: seconds until the port answered
/health and until the first token, median and every run.

As after a first `tandem serve`, the bytecode of tandem's own modules is cached before timing (Python
writes it on first import unless PYTHONDONTWRITEBYTECODE is set, as it is in some sandboxes; compiling
them from source again on every start would add ~0.1 s that no installed tandem pays).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.environment import describe_environment

QUESTION = {"role": "user", "content": "What is the capital of France?"}
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class ColdStart:
    healthy_s: float
    first_token_s: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__.splitlines()[0])
    p.add_argument("--profiles", nargs="+", choices=["dev", "prod"], default=["dev", "prod"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one server")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.add_argument("--config", type=Path, default=None, help="serve this config file instead of the built-in")
    p.add_argument("--make", action="store_true", help="start `make serve` in this checkout instead")
    return p.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _first_token(client: httpx.Client, url: str, deadline: float) -> float:
    """Seconds (perf_counter) when the first content token of a streamed chat arrived."""
    body = {"model": "default", "messages": [QUESTION], "max_tokens": 8, "stream": True}
    timeout = max(deadline - time.perf_counter(), 1)
    with client.stream("POST", url, json=body, timeout=timeout) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[len("data: ") :]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                return time.perf_counter()
    raise RuntimeError("the stream ended without a token")


def cache_bytecode() -> None:
    """Write the bytecode of the packages `tandem serve` imports from this checkout (see the docstring)."""
    import backends
    import gateway

    for package in (gateway, backends):
        for directory in package.__path__:
            compileall.compile_dir(directory, quiet=1)


def measure(profile: str, timeout: float, config: Path | None = None, make: bool = False) -> ColdStart:
    command = shutil.which("tandem", path=str(Path(sys.executable).parent))
    argv = [command, "serve"] if command else [sys.executable, "-m", "gateway.cli", "serve"]
    if make:  # the README's first command, in this checkout: its install check, then tandem serve
        argv = ["make", "-s", "-C", str(REPO), "serve"]
    if config is not None:
        argv += ["ARGS=--config " + str(config.resolve())] if make else ["--config", str(config.resolve())]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # One client, made before the server starts: a new httpx client per poll builds an SSL context
    # (~50 ms of CPU each), which on a small machine takes a core from the server it is timing.
    with tempfile.TemporaryDirectory(prefix="tandem-cold-") as workdir, httpx.Client() as client:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
        env |= {"TANDEM_PROFILE": profile, "TANDEM_PORT": str(port), "TANDEM_HOME": f"{workdir}/home",
                "TANDEM_LOG_LEVEL": "warning"}  # fmt: skip
        log = open(Path(workdir) / "serve.log", "wb")  # noqa: SIM115 (closed below, after the process)
        started = time.perf_counter()
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        deadline = started + timeout
        try:
            healthy = None
            while healthy is None:
                if process.poll() is not None or time.perf_counter() > deadline:
                    raise RuntimeError(f"{profile}: the server did not come up:\n{_tail(workdir)}")
                try:
                    if client.get(f"{base}/health", timeout=1).status_code == 200:
                        healthy = time.perf_counter()
                except httpx.TransportError:
                    time.sleep(0.005)
            first = _first_token(client, f"{base}/v1/chat/completions", deadline)
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # the server, and make when it started it
            process.wait(timeout=30)
            log.close()
    return ColdStart(healthy - started, first - started)


def _tail(workdir: str) -> str:
    return (Path(workdir) / "serve.log").read_text(errors="replace")[-2000:]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from backends.demo_model import ensure_demo_model

    model = ensure_demo_model()  # cached before timing anything: the benchmark is of a warm cache
    cache_bytecode()
    results: dict[str, list[ColdStart]] = {}
    for profile in args.profiles:
        results[profile] = [
            measure(profile, args.timeout, args.config, args.make) for _ in range(args.repeats)
        ]
    out = sys.stdout
    how = "make serve" if args.make else "tandem serve"
    if args.config is not None:
        served = f"--config {args.config}"
    else:
        served = "config/tandem.yaml" if args.make else "built-in config"
    out.write(f"\ncold start of `{how}` ({served}, {model.name} cached), median of {args.repeats}\n\n")
    out.write(f"{'profile':<10}{'healthy s':>12}{'first token s':>16}   runs (first token s)\n")
    for profile, runs in results.items():
        healthy = statistics.median(r.healthy_s for r in runs)
        first = statistics.median(r.first_token_s for r in runs)
        every = ", ".join(f"{r.first_token_s:.2f}" for r in runs)
        out.write(f"{profile:<10}{healthy:>12.2f}{first:>16.2f}   {every}\n")
    if args.json is not None:
        record = {
            "environment": describe_environment(argv, command="python -m bench.cold_start", with_torch=False),
            "model": str(model),
            "started_by": how,
            "config": served,
            "results": {profile: [asdict(r) for r in runs] for profile, runs in results.items()},
        }
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
