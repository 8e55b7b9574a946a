"""The servers `tandem bench serve` compares, each started as its own process on one GGUF file:

- tandem's dev profile (`tandem serve`, backend llamacpp), `parallel: N` where this build has it;
- llama-cpp-python's own server (`python -m llama_cpp.server`, serial by design), from the same wheel;
- llama.cpp's C++ `llama-server -np N` (what Ollama runs inside), built from the llama.cpp sources vendored
  in that wheel's sdist (bench/build_llama_server.sh), so all three run the same ggml kernels.

Each peer asks for exactly max_tokens tokens its own way: tandem and llama-server take `ignore_eos`,
llama_cpp.server takes `min_tokens` (its MinTokensLogitsProcessor masks EOS until then).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.gateway_servers import Server, base_env, free_port, start_server, tandem_serve_command, wait_ready
from bench.serve_client import ChatLoad

PEERS = ("tandem-dev", "llama-cpp-python-server", "llama-server")
MODEL = "bench"
LLAMA_SERVER_ENV = "TANDEM_BENCH_LLAMA_SERVER"  # another llama-server binary than the cached build


def default_llama_server() -> Path:
    """Where bench/build_llama_server.sh (`make llama-server`) installs it."""
    found = os.environ.get(LLAMA_SERVER_ENV)
    return (
        Path(found) if found else Path.home() / ".cache" / "tandem" / "llama-server" / "bin" / "llama-server"
    )


@dataclass(frozen=True, slots=True)
class ServeSettings:
    model_path: Path
    threads: int
    context_per_stream: int  # context_length per request (tandem, llama_cpp.server) = per slot (llama-server)
    workdir: Path
    llama_server: Path


@dataclass
class RunningPeer:
    name: str
    server: Server
    load_for: Callable[[int], ChatLoad]  # max_tokens -> what every stream sends
    describe: dict[str, Any]  # the command and settings, for the report


def tandem_parallel_setting() -> str | None:
    """How this build sets the batching llama.cpp backend's slots (issue 15): "entry" (a model entry's
    `parallel:`), "env" (TANDEM_LLAMACPP_PARALLEL) or None (a build that decodes one request at a time)."""
    from gateway.config import ModelSpec
    from gateway.settings import Settings

    if "parallel" in ModelSpec.model_fields:
        return "entry"
    return "env" if "llamacpp_parallel" in Settings.model_fields else None


def start_tandem(settings: ServeSettings, slots: int) -> RunningPeer:
    entry: dict[str, Any] = {
        "name": MODEL,
        "backend": "llamacpp",
        "path": str(settings.model_path),
        "context_length": settings.context_per_stream,
        "preload": True,
        "keep_alive": -1,
    }
    setting = tandem_parallel_setting()
    if setting == "entry":
        entry["parallel"] = slots
    config = {"profile": "bench", "profiles": {"bench": {"models": [entry]}}}
    command, port = tandem_serve_command(config, settings.workdir)
    env = base_env() | {
        "TANDEM_HOME": str(settings.workdir / "tandem-home"),
        "TANDEM_LOG_LEVEL": "warning",
        "TANDEM_LLAMACPP_THREADS": str(settings.threads),
        "TANDEM_MAX_QUEUED_REQUESTS": str(max(64, 2 * slots)),
    }
    if setting == "env":
        env["TANDEM_LLAMACPP_PARALLEL"] = str(slots)
    server = start_server("tandem-dev", command, env, settings.workdir, port, None)
    wait_ready(server, "/health")
    describe = {
        "command": "tandem serve --config tandem.yaml --port N",
        "config": config,
        "env": {k: v for k, v in env.items() if k.startswith("TANDEM_") and k != "TANDEM_HOME"},
        "batching": f"parallel {slots}" if setting else "serial (this build has no `parallel` setting)",
    }
    url = f"{server.base_url}/v1/chat/completions"
    return RunningPeer(
        "tandem-dev", server, lambda n: ChatLoad(url, MODEL, n, {"ignore_eos": True}), describe
    )


def llama_cpp_python_command(model: Path, alias: str, context: int, threads: int, port: int) -> list[str]:
    """`python -m llama_cpp.server` on `model` (one Llama of `context` cells; the `bench` extra)."""
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
            "--n_ctx", str(context), "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def llama_server_command(
    binary: Path, model: Path, alias: str, slots: int, context: int, threads: int, port: int
) -> list[str]:
    """llama-server on `model`: `slots` sequences (-np) of `context` cells each."""
    return [str(binary), "-m", str(model), "-a", alias, "-c", str(context * slots), "-np", str(slots),
            "-t", str(threads), "-tb", str(threads), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def start_llama_cpp_python(settings: ServeSettings, slots: int) -> RunningPeer:
    del slots  # serial: one Llama behind a lock, whatever the concurrency
    port = free_port()
    command = llama_cpp_python_command(settings.model_path, MODEL, settings.context_per_stream,
                                       settings.threads, port)  # fmt: skip
    server = start_server("llama-cpp-python-server", command, base_env(), settings.workdir, port, None)
    wait_ready(server, "/v1/models")
    describe = {
        "command": " ".join(["python -m llama_cpp.server", *command[3:-2], "--port", "N"]),
        "batching": "serial (one Llama, requests take turns; interrupt_requests at its default)",
        "exact_length": "min_tokens = max_tokens",
    }
    url = f"{server.base_url}/v1/chat/completions"
    return RunningPeer(
        "llama-cpp-python-server", server, lambda n: ChatLoad(url, MODEL, n, {"min_tokens": n}), describe
    )


def start_llama_server(settings: ServeSettings, slots: int) -> RunningPeer:
    binary = settings.llama_server
    if not binary.is_file():
        raise FileNotFoundError(llama_server_missing(binary))
    port = free_port()
    command = llama_server_command(binary, settings.model_path, MODEL, slots, settings.context_per_stream,
                                   settings.threads, port)  # fmt: skip
    server = start_server("llama-server", command, base_env(), settings.workdir, port, None)
    wait_ready(server, "/health")
    describe = {
        "command": " ".join(["llama-server", *command[1:-2], "--port", "N"]),
        "binary": str(binary),
        "batching": f"{slots} slots (-np), {settings.context_per_stream} context cells each",
    }
    url = f"{server.base_url}/v1/chat/completions"
    return RunningPeer(
        "llama-server", server, lambda n: ChatLoad(url, MODEL, n, {"ignore_eos": True}), describe
    )


def llama_server_missing(binary: Path) -> str:
    return (
        f"llama-server is not built ({binary} is missing): run `make llama-server` "
        f"(bench/build_llama_server.sh, compiles llama.cpp once into the cache), point {LLAMA_SERVER_ENV} "
        "at a binary, or leave it out with --peers"
    )


STARTERS: dict[str, Callable[[ServeSettings, int], RunningPeer]] = {
    "tandem-dev": start_tandem,
    "llama-cpp-python-server": start_llama_cpp_python,
    "llama-server": start_llama_server,
}


def start_peer(name: str, settings: ServeSettings, slots: int) -> RunningPeer:
    """A fresh working directory per start: nothing (prompt cache, logs) carries over from the last one."""
    workdir = settings.workdir / f"{name}-{slots}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return STARTERS[name](replace(settings, workdir=workdir), slots)
