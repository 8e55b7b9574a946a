"""`tandem bench cold-start` (or `python -m bench.cold_start`): from `tandem serve` (as `make serve` runs it,
no config file: the built-in demo model, already in the cache) to the first streamed token of a chat
completion, per profile, next to llama.cpp's C++ llama-server and llama-cpp-python's server starting on
the same GGUF file. With --make, tandem is started by `make serve` itself in this checkout (its
config/tandem.yaml: the same demo model).

Each run starts a fresh server process in an empty directory with a free port, sends the chat request as
soon as /health answers (llama-cpp-python's server has none: /v1/models; a model that is not preloaded
loads on that first request), and stops the server once the first token has arrived. The servers take
turns run by run, so that a drift in the machine's speed reaches each alike. Every server gets the same
request, the demo config's system prompt included, so every one prefills the same prompt; the peers are
given tandem's dev shape (4 slots of 2048 cells for llama-server, a 2048-cell context for
llama-cpp-python, which serves one at a time), 2 threads. Reported per server: seconds until /health
answered and until the first token, median and every run.

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
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.environment import describe_environment
from bench.gateway_servers import free_port
from bench.serve_peers import (
    default_llama_server,
    llama_cpp_python_command,
    llama_server_command,
    llama_server_missing,
)

# the demo config's system prompt, sent by the request so that every server renders the same prompt
MESSAGES = [{"role": "system", "content": "You are concise."},
            {"role": "user", "content": "What is the capital of France?"}]  # fmt: skip
REPO = Path(__file__).resolve().parents[1]
PEERS = ("llama-server", "llama-cpp-python-server")
THREADS, SLOTS, CONTEXT = 2, 4, 2048  # tandem dev's defaults on this machine's 2 cores


@dataclass(frozen=True, slots=True)
class ColdStart:
    healthy_s: float
    first_token_s: float


@dataclass(frozen=True, slots=True)
class Start:
    """One server to time: how to start it on `port`."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_path: str = "/health"  # answers 200 once the model is loaded


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tandem bench cold-start", description=__doc__.splitlines()[0])
    p.add_argument("--profiles", nargs="+", choices=["dev", "prod"], default=["dev", "prod"])
    p.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS), help="none: tandem alone")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one server")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.add_argument("--config", type=Path, default=None, help="serve this config file instead of the built-in")
    p.add_argument("--make", action="store_true", help="start tandem with `make serve` in this checkout")
    return p.parse_args(argv)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}


def tandem_start(profile: str, config: Path | None, make: bool, port: int, home: str) -> Start:
    command = shutil.which("tandem", path=str(Path(sys.executable).parent))
    argv = [command, "serve"] if command else [sys.executable, "-m", "gateway.cli", "serve"]
    if make:  # the README's first command, in this checkout: its install check, then tandem serve
        argv = ["make", "-s", "-C", str(REPO), "serve"]
    if config is not None:
        argv += ["ARGS=--config " + str(config.resolve())] if make else ["--config", str(config.resolve())]
    env = _clean_env() | {"TANDEM_PROFILE": profile, "TANDEM_PORT": str(port), "TANDEM_HOME": home,
                          "TANDEM_LOG_LEVEL": "warning"}  # fmt: skip
    return Start(f"tandem {profile}", argv, env)


def peer_start(name: str, model: Path, port: int) -> Start:
    if name == "llama-server":
        binary = default_llama_server()
        if not binary.is_file():
            raise FileNotFoundError(llama_server_missing(binary))
        argv = llama_server_command(binary, model, "default", SLOTS, CONTEXT, THREADS, port)
        return Start(name, argv, _clean_env())
    argv = llama_cpp_python_command(model, "default", CONTEXT, THREADS, port)
    return Start(name, argv, _clean_env(), "/v1/models")  # it has no /health; it listens once loaded


def _first_token(client: httpx.Client, url: str, deadline: float) -> float:
    """Seconds (perf_counter) when the first content token of a streamed chat arrived."""
    body = {"model": "default", "messages": MESSAGES, "max_tokens": 8, "stream": True}
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


def measure(start: Start, port: int, workdir: str, timeout: float) -> ColdStart:
    base = f"http://127.0.0.1:{port}"
    # One client, made before the server starts: a new httpx client per poll builds an SSL context
    # (~50 ms of CPU each), which on a small machine takes a core from the server it is timing.
    with httpx.Client() as client:
        log = open(Path(workdir) / "serve.log", "wb")  # noqa: SIM115 (closed below, after the process)
        started = time.perf_counter()
        process = subprocess.Popen(start.argv, cwd=workdir, env=start.env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = started + timeout
        try:
            healthy = None
            while healthy is None:
                if process.poll() is not None or time.perf_counter() > deadline:
                    raise RuntimeError(f"{start.name}: the server did not come up:\n{_tail(workdir)}")
                try:
                    if client.get(f"{base}{start.ready_path}", timeout=1).status_code == 200:
                        healthy = time.perf_counter()
                except httpx.TransportError:
                    pass
                if healthy is None:
                    time.sleep(0.005)
            first = _first_token(client, f"{base}/v1/chat/completions", deadline)
        finally:
            os.killpg(process.pid, signal.SIGTERM)  # the server, and make when it started it
            process.wait(timeout=30)
            log.close()
    return ColdStart(healthy - started, first - started)


def _tail(workdir: str) -> str:
    return (Path(workdir) / "serve.log").read_text(errors="replace")[-2000:]


def run(name: str, args: argparse.Namespace, model: Path) -> ColdStart:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tandem-cold-") as workdir:
        if name.startswith("tandem "):
            start = tandem_start(name.split()[1], args.config, args.make, port, f"{workdir}/home")
        else:
            start = peer_start(name, model, port)
        return measure(start, port, workdir, args.timeout)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from backends.demo_model import ensure_demo_model

    model = ensure_demo_model()  # cached before timing anything: the benchmark is of a warm cache
    cache_bytecode()
    names = [f"tandem {profile}" for profile in args.profiles] + list(args.peers)
    results: dict[str, list[ColdStart]] = {name: [] for name in names}
    for _ in range(args.repeats):  # interleaved: a drift in the machine's speed reaches every server alike
        for name in names:
            results[name].append(run(name, args, model))
    out = sys.stdout
    how = "make serve" if args.make else "tandem serve"
    if args.config is not None:
        served = f"--config {args.config}"
    else:
        served = "config/tandem.yaml" if args.make else "built-in config"
    out.write(f"\ncold start to the first token, tandem by `{how}` ({served}), {model.name} cached, "
              f"median of {args.repeats}\n\n")  # fmt: skip
    out.write(f"{'server':<26}{'healthy s':>10}{'first token s':>16}   runs (first token s)\n")
    for name, runs in results.items():
        healthy = statistics.median(r.healthy_s for r in runs)
        first = statistics.median(r.first_token_s for r in runs)
        every = ", ".join(f"{r.first_token_s:.2f}" for r in runs)
        out.write(f"{name:<26}{healthy:>10.2f}{first:>16.2f}   {every}\n")
    if args.json is not None:
        record = {
            "environment": describe_environment(argv, command="tandem bench cold-start", with_torch=False),
            "model": str(model),
            "started_by": how,
            "config": served,
            "peers": {
                "threads": THREADS,
                "llama-server": f"-np {SLOTS} -c {SLOTS * CONTEXT}",
                "llama-cpp-python-server": f"--n_ctx {CONTEXT}",
            },
            "results": {name: [asdict(r) for r in runs] for name, runs in results.items()},
        }
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
