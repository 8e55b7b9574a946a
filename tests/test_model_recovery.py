"""A backend that fails is reported and replaced: through a real HTTP server (uvicorn, the gateway app,
the ModelManager, the paged engine on the tiny model), in this process so that the test can make the
model runner raise once.

Proves: the streams in flight end with an error event at once (none hangs), /health answers 503 naming
the model while it is reloaded, requests meanwhile wait for the reload, and the model serves again.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

pytest.importorskip("torch")

import uvicorn

import gateway.startup
from backends.base import BackendHealth, BackendState, BackendUnavailableError
from gateway.app import create_app
from gateway.auth import open_access
from gateway.config import ModelSpec, load_config, select_profile
from gateway.model_store import ModelStore
from gateway.registry import ManagedModel, ModelManager, ModelState
from gateway.routing import Router
from gateway.settings import Settings
from tests.conftest import free_port, model_entry

HANG_S = 60  # bounds every wait: reaching it means something hung
MASTER = "sk-master-recovery-test-0123456789"


@dataclass
class InProcessServer:
    url: str
    models: ModelManager
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(HANG_S)


def _serve(config: dict, workdir: Path) -> InProcessServer:
    """What `tandem serve` builds, on a thread of this process."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "tandem.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    settings = Settings(config=path, home=workdir / "home", port=port, log_level="warning", master_key=MASTER)
    loaded, source = load_config(settings.config)
    profile_name, profile = select_profile(loaded, source, None)
    store = ModelStore(settings.resolved_home() / "models" / "created")
    models = gateway.startup.build_manager(profile, profile_name, settings, source, store)
    server_box: list[uvicorn.Server] = []
    started = threading.Event()

    async def main() -> None:
        access = await open_access(settings.auth_settings(loaded.auth))
        app = create_app(settings, models, Router(profile, models), store, access)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        server_box.append(server)
        started.set()
        await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="in-process-tandem", daemon=True)
    thread.start()
    assert started.wait(HANG_S)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return InProcessServer(url, models, server_box[0], thread)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("the in-process server never became healthy")


@pytest.fixture
def gated_loads(monkeypatch) -> Iterator[threading.Event]:
    """The first load of a model runs at once; every later one (the reload) waits for the event."""
    load = gateway.startup.load_backend
    gate = threading.Event()
    count = [0]

    def gated(model, settings):
        count[0] += 1
        if count[0] > 1:
            assert gate.wait(HANG_S), "the test never opened the gate"
        return load(model, settings)

    monkeypatch.setattr(gateway.startup, "load_backend", gated)
    yield gate
    gate.set()


def _first_event(lines: Iterator[str]) -> dict:
    for line in lines:
        if line.startswith("data: "):
            return json.loads(line.removeprefix("data: "))
    raise AssertionError("the stream ended without an event")


def _rest(lines: Iterator[str]) -> list[str]:
    return [line for line in lines if line.startswith("data: ")]


def test_a_failed_engine_is_reported_reloaded_and_serves_again(
    tiny_llama, tmp_path, gated_loads, monkeypatch
):
    entry = model_entry(tiny_llama, "prod", preload=True)
    server = _serve({"profile": "prod", "profiles": {"prod": {"models": [entry]}}}, tmp_path)
    try:
        model = server.models.resolve("tiny")
        failed_backend = model.backend
        runner = failed_backend.engine.runner
        execute = runner.execute
        armed = threading.Event()

        def faulty(inputs):
            if armed.is_set():
                armed.clear()
                raise RuntimeError("injected step fault")
            return execute(inputs)

        monkeypatch.setattr(runner, "execute", faulty)
        make_generator = runner.make_generator

        def failing_admission(seed: int):
            if seed == 13:
                raise RuntimeError("injected admission fault")
            return make_generator(seed)

        monkeypatch.setattr(runner, "make_generator", failing_admission)
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 200, "temperature": 0, "ignore_eos": True,
                "stream": True}  # fmt: skip
        master = {"authorization": f"Bearer {MASTER}"}
        with httpx.Client(base_url=server.url, timeout=HANG_S, headers=master) as client:
            # one request's fault: a 500 in each protocol's envelope, and the model serves on
            bad = client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 4, "seed": 13})
            assert bad.status_code == 500 and bad.json()["error"]["type"] == "server_error", bad.text
            with client.stream("POST", "/v1/completions", json={**body, "max_tokens": 4, "seed": 13}) as bad:
                errors = [e for e in _rest(bad.iter_lines()) if '"error"' in e]
                assert (
                    errors and json.loads(errors[0].removeprefix("data: "))["error"]["type"] == "server_error"
                )
            ollama = {"model": "tiny", "prompt": "hi", "stream": False, "options": {"seed": 13}}
            bad = client.post("/api/generate", json=ollama)
            assert bad.status_code == 500 and isinstance(bad.json()["error"], str), bad.text
            assert client.get("/health").status_code == 200
            assert model.backend is failed_backend and failed_backend.health.state is BackendState.READY
            with (
                client.stream("POST", "/v1/completions", json=body) as a,
                client.stream("POST", "/v1/completions", json=body) as b,
            ):
                lines_a, lines_b = a.iter_lines(), b.iter_lines()
                assert "choices" in _first_event(lines_a) and "choices" in _first_event(lines_b)
                armed.set()  # both are running: the next step raises
                for rest in (_rest(lines_a), _rest(lines_b)):
                    errors = [json.loads(e.removeprefix("data: ")) for e in rest if '"error"' in e]
                    assert errors, rest[-3:]
                    assert "injected step fault" in errors[-1]["error"]["message"]
            assert failed_backend.health.state is BackendState.FAILED

            # the reload waits for the gate: the failure is visible, its details to the master key only
            anonymous = httpx.get(f"{server.url}/health", timeout=HANG_S)
            assert anonymous.status_code == 503 and anonymous.json() == {"status": "unhealthy"}
            health = client.get("/health")
            assert health.status_code == 503, health.text
            report = health.json()
            assert report["status"] == "unhealthy"
            assert [f["model"] for f in report["failed"]] == ["tiny"]
            assert "injected step fault" in report["failed"][0]["error"]
            assert report["states"]["tiny"] == ModelState.LOADING.value

            with ThreadPoolExecutor(1) as pool:  # a request meanwhile waits for the reload, then succeeds
                waiting = pool.submit(
                    client.post, "/v1/completions", json={**body, "stream": False, "max_tokens": 4}
                )
                gated_loads.set()
                answer = waiting.result(HANG_S)
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["finish_reason"] == "length"

            health = client.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            assert "failed" not in health.json() or health.json()["failed"] == []
            assert model.backend is not failed_backend and model.failures == 1
            again = client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 4})
            assert again.status_code == 200
    finally:
        server.stop()


# ---- the manager's rules for a failed backend, with a stand-in backend (the real one is covered above) ----


class _StandIn:
    kind = "llamacpp"

    def __init__(self) -> None:
        self.health = BackendHealth(BackendState.READY)
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


def test_a_failed_reload_is_reported_and_the_next_request_loads_again(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"x" * 100)
    backends: list[_StandIn] = []
    reload_fails = [True]

    def loader(model: ManagedModel) -> _StandIn:
        if backends and reload_fails[0]:
            reload_fails[0] = False
            raise OSError("injected load fault")
        backends.append(_StandIn())
        return backends[-1]

    async def scenario() -> None:
        model = ManagedModel(ModelSpec(name="m", backend="llamacpp", path=str(path)), path, 300.0)
        manager = ModelManager([model], loader, max_loaded=1, memory_budget_bytes=2**40)
        (await manager.acquire(model)).release()
        backends[0].health = BackendHealth(BackendState.FAILED, "injected engine fault")
        manager.check_backend(model)
        assert manager.failed() == [model] and model.failure.error == "injected engine fault"
        with pytest.raises(BackendUnavailableError, match="injected load fault"):
            await model.load_task  # the reload fails too
        assert backends[0].closed and model.state is ModelState.UNLOADED
        assert manager.failed() == [model] and "injected load fault" in model.failure.reload_error
        (await manager.acquire(model)).release()  # the next request loads it again
        assert model.state is ModelState.LOADED and model.backend is backends[1]
        assert manager.failed() == [] and model.failures == 1
        await manager.aclose()

    asyncio.run(scenario())
