"""Models come and go on demand: load on first use, keep_alive, LRU eviction, one load for many waiters."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest

from backends.base import BackendCapabilities, BackendHealth, BackendState
from backends.stats import BackendStats
from gateway.config import ModelSpec
from gateway.errors import APIError
from gateway.registry import ManagedModel, ModelManager, ModelState
from tests.conftest import start_server


@pytest.fixture(scope="module")
def two_model_server(tiny_llama, tmp_path_factory):
    """Two models, at most one loaded at a time."""
    entries = [
        {"name": "alpha", "backend": "llamacpp", "path": str(tiny_llama.gguf_path)},
        {"name": "beta", "backend": "llamacpp", "path": str(tiny_llama.gguf_path)},
    ]
    config = {"profile": "dev", "profiles": {"dev": {"models": entries}}}
    server = start_server(config, tmp_path_factory.mktemp("lifecycle"), env={"TANDEM_MAX_LOADED_MODELS": "1"})
    yield server
    server.stop()


def _loaded(client: ollama.Client) -> list[str]:
    return [m.model for m in client.ps().models]


def _generate(client: ollama.Client, model: str, **kwargs) -> ollama.GenerateResponse:
    return client.generate(model=model, prompt="hi", options={"num_predict": 2}, **kwargs)


def test_load_on_first_use_and_lru_eviction(two_model_server):
    client = ollama.Client(host=two_model_server.base_url)
    assert _loaded(client) == []
    first = _generate(client, "alpha")
    assert first.load_duration > 0  # this request waited for the load
    assert _loaded(client) == ["alpha:latest"]
    assert _generate(client, "alpha").load_duration == 0
    _generate(client, "beta")
    assert _loaded(client) == ["beta:latest"]
    assert "unloading model 'alpha' to make room for 'beta'" in two_model_server.log()
    states = {m["id"]: m["state"] for m in httpx.get(f"{two_model_server.v1}/models").json()["data"]}
    assert states == {"alpha": "unloaded", "beta": "loaded"}


def test_keep_alive_zero_and_short(two_model_server):
    client = ollama.Client(host=two_model_server.base_url)
    _generate(client, "alpha", keep_alive=0)
    deadline = time.monotonic() + 10
    while _loaded(client) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _loaded(client) == []
    _generate(client, "alpha", keep_alive="1s")
    running = client.ps().models
    assert [m.model for m in running] == ["alpha:latest"]
    assert running[0].expires_at is not None
    deadline = time.monotonic() + 10
    while _loaded(client) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _loaded(client) == []  # the reaper unloaded it once idle past keep_alive


def test_empty_prompt_loads_and_keep_alive_zero_unloads(two_model_server):
    client = ollama.Client(host=two_model_server.base_url)
    assert client.generate(model="beta", prompt="").done_reason == "load"
    assert _loaded(client) == ["beta:latest"]
    assert client.generate(model="beta", prompt="", keep_alive=0).done_reason == "unload"
    assert _loaded(client) == []


def test_concurrent_requests_share_one_load(two_model_server):
    client = ollama.Client(host=two_model_server.base_url)
    client.generate(model="alpha", prompt="", keep_alive=0)
    client.generate(model="beta", prompt="", keep_alive=0)
    loads_before = two_model_server.log().count("loading model 'alpha'")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: _generate(client, "alpha"), range(4)))
    assert all(r.done for r in results)
    assert two_model_server.log().count("loading model 'alpha'") == loads_before + 1


def test_invalid_keep_alive_is_a_400(two_model_server):
    response = httpx.post(
        f"{two_model_server.base_url}/api/generate",
        json={"model": "alpha", "prompt": "x", "keep_alive": "soon"},
    )
    assert response.status_code == 400 and "duration" in response.json()["error"]


# ---- the manager's rules, with a stand-in backend (loading real models is covered above) ----


class _StandInBackend:
    kind = "llamacpp"
    capabilities = BackendCapabilities()
    health = BackendHealth(BackendState.READY)

    def __init__(self) -> None:
        self.closed = False

    def stats(self) -> BackendStats:
        return BackendStats(running=0, waiting=0)

    async def aclose(self) -> None:
        self.closed = True


def _manager(tmp_path: Path, names: list[str], max_loaded: int = 1, budget: int = 2**40) -> ModelManager:
    models = []
    for name in names:
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(b"x" * 1000)
        models.append(ManagedModel(ModelSpec(name=name, backend="llamacpp", path=str(path)), path, 300.0))
    return ModelManager(models, loader=lambda model: _StandInBackend(), max_loaded=max_loaded,
                        memory_budget_bytes=budget)  # fmt: skip


def test_busy_models_are_never_evicted(tmp_path):
    async def scenario() -> None:
        manager = _manager(tmp_path, ["a", "b"])
        a, b = manager.resolve("a"), manager.resolve("b")
        lease = await manager.acquire(a)
        with pytest.raises(APIError) as caught:
            await manager.acquire(b)
        assert caught.value.status == 503 and caught.value.body.code == "models_busy"
        lease.release()
        (await manager.acquire(b)).release()
        assert a.state is ModelState.UNLOADED and b.state is ModelState.LOADED
        await manager.aclose()

    asyncio.run(scenario())


def test_memory_budget_refuses_a_model_that_cannot_fit(tmp_path):
    async def scenario() -> None:
        manager = _manager(tmp_path, ["a"], budget=1024)
        with pytest.raises(APIError) as caught:
            await manager.acquire(manager.resolve("a"))
        assert caught.value.body.code == "insufficient_memory"
        assert "TANDEM_MEMORY_BUDGET_GB" in caught.value.body.message

    asyncio.run(scenario())


def test_memory_budget_evicts_idle_models_first(tmp_path):
    async def scenario() -> None:
        manager = _manager(tmp_path, ["a", "b"], max_loaded=5)
        a, b = manager.resolve("a"), manager.resolve("b")
        manager._memory_budget = a.estimated_bytes + b.estimated_bytes - 1  # room for one at a time
        (await manager.acquire(a)).release()
        backend_a = a.backend
        (await manager.acquire(b)).release()
        assert a.state is ModelState.UNLOADED and backend_a.closed
        await manager.aclose()

    asyncio.run(scenario())


def test_dropped_lease_is_released(tmp_path):
    async def scenario() -> None:
        manager = _manager(tmp_path, ["a"])
        a = manager.resolve("a")
        await manager.acquire(a)  # the lease is dropped at once: its finalizer gives the hold back
        assert a.in_use == 0
        await manager.aclose()

    asyncio.run(scenario())
