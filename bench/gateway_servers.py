"""The processes `tandem bench gateway` measures: the stub upstream, tandem, and LiteLLM's proxy."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
LITELLM_VERSION = "1.106.2"
DEFAULT_LITELLM_VENV = REPO / ".cache" / "bench-litellm"
MODEL = "stub"
START_TIMEOUT_S = 240.0


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


def tandem_serve_command(config: dict[str, Any], workdir: Path) -> tuple[list[str], int]:
    """Writes config to workdir/tandem.yaml; returns the `tandem serve` command for it and its free port."""
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
    return command, port


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
    command, port = tandem_serve_command(config, workdir)
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
