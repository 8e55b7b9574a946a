"""A load begun before the first request (ModelManager.begin_load; `tandem serve` begins llama.cpp preloads
while it imports the app): the one load that requests wait for, failing as a load on first use fails, and
idle after keep_alive like a model a request used. Real llama.cpp on the tiny model."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gguf
import httpx
import numpy as np
import pytest

from backends.base import BackendUnavailableError
from gateway.config import ModelSpec, Profile
from gateway.model_store import ModelStore
from gateway.registry import ModelManager, ModelState
from gateway.settings import Settings
from gateway.startup import begin_preloads, build_manager
from tests.conftest import start_server


def _manager(tmp_path: Path, path: Path, **spec: object) -> ModelManager:
    profile = Profile(models=[ModelSpec(name="tiny", backend="llamacpp", path=str(path), **spec)])
    store = ModelStore(tmp_path / "created")
    return build_manager(profile, "dev", Settings(), "test.yaml", store)


def _loads(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.getMessage().startswith("loading model 'tiny'") for r in caplog.records)


@pytest.fixture
def unloadable(tmp_path: Path) -> Path:
    """A GGUF file that reads as one (tandem's start-up checks pass) and that llama.cpp refuses to load:
    a llama model without its hyperparameters and weights."""
    path = tmp_path / "unloadable.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_first_request_is_served_by_the_load_begun_early(tiny_llama, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tandem.gateway")

    async def scenario() -> None:
        manager = _manager(tmp_path, tiny_llama.gguf_path)
        model = manager.resolve("tiny")
        assert model is not None and manager.begin_load(model)
        assert model.state is ModelState.LOADING
        assert not manager.begin_load(model)  # one load at a time
        lease = await manager.acquire(model)
        assert model.state is ModelState.LOADED and lease.served.backend is model.backend
        assert lease.served.backend.tokenize("hello")
        lease.release()
        assert _loads(caplog) == 1
        await manager.aclose()

    asyncio.run(scenario())


def test_an_early_load_that_fails_fails_as_a_load_on_first_use(unloadable, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tandem.gateway")

    async def failure(early: bool) -> str:
        manager = _manager(tmp_path, unloadable)
        model = manager.resolve("tiny")
        assert model is not None
        if early:
            assert manager.begin_load(model)
        with pytest.raises(BackendUnavailableError) as caught:
            await manager.acquire(model)
        assert model.state is ModelState.UNLOADED and model.backend is None
        await manager.aclose()
        return str(caught.value)

    lazy, early = asyncio.run(failure(early=False)), asyncio.run(failure(early=True))
    assert early == lazy and early.startswith("model 'tiny' failed to load: ")
    assert _loads(caplog) == 2  # the early load was the request's: it started no load of its own


def test_the_next_request_after_a_failed_early_load_tries_again(unloadable, tiny_llama, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tandem.gateway")
    path = tmp_path / "model.gguf"
    shutil.copy(unloadable, path)

    async def scenario() -> None:
        manager = _manager(tmp_path, path)
        model = manager.resolve("tiny")
        assert model is not None and manager.begin_load(model)
        with pytest.raises(BackendUnavailableError):
            await asyncio.shield(model.load_task)  # type: ignore[arg-type]
        shutil.copy(tiny_llama.gguf_path, path)  # the file is fixed: the next request loads it
        (await manager.acquire(model)).release()
        assert model.state is ModelState.LOADED and _loads(caplog) == 2
        await manager.aclose()

    asyncio.run(scenario())


def test_a_model_loaded_early_and_never_used_unloads_after_its_keep_alive(tiny_llama, tmp_path):
    async def scenario() -> None:
        manager = _manager(tmp_path, tiny_llama.gguf_path, keep_alive="1s")
        model = manager.resolve("tiny")
        assert model is not None and manager.begin_load(model)
        await manager.start()  # the reaper
        await asyncio.shield(model.load_task)  # type: ignore[arg-type]
        assert model.state is ModelState.LOADED and model.expires_at is not None
        deadline = time.monotonic() + 30
        while model.state is not ModelState.UNLOADED and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert model.state is ModelState.UNLOADED
        await manager.aclose()

    asyncio.run(scenario())


def test_no_early_load_where_it_would_not_stay_or_not_fit(tiny_llama, tmp_path):
    async def scenario() -> None:
        unloads_at_once = _manager(tmp_path, tiny_llama.gguf_path, keep_alive=0)
        model = unloads_at_once.resolve("tiny")
        assert model is not None and not unloads_at_once.begin_load(model)
        too_big = _manager(tmp_path, tiny_llama.gguf_path)
        model = too_big.resolve("tiny")
        assert model is not None
        too_big._memory_budget = model.estimated_bytes - 1  # its first request: 503 insufficient_memory
        assert not too_big.begin_load(model) and model.state is ModelState.UNLOADED

    asyncio.run(scenario())


def test_serve_begins_llama_cpp_preloads_only(tiny_llama, tmp_path):
    async def scenario() -> None:
        preloaded = _manager(tmp_path, tiny_llama.gguf_path, preload=True)
        lazy = _manager(tmp_path, tiny_llama.gguf_path)
        assert [m.spec.name for m in begin_preloads(preloaded)] == ["tiny"]
        assert begin_preloads(lazy) == []
        await preloaded.start()  # waits for the load begun above
        assert [m.spec.name for m in preloaded.loaded()] == ["tiny"]
        await preloaded.aclose()
        await lazy.aclose()

    asyncio.run(scenario())


def test_a_preload_whose_early_load_failed_fails_start_without_loading_again(unloadable, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tandem.gateway")

    async def scenario() -> None:
        manager = _manager(tmp_path, unloadable, preload=True)
        model = manager.resolve("tiny")
        assert model is not None and begin_preloads(manager) == [model]
        with pytest.raises(BackendUnavailableError):
            await asyncio.shield(model.load_task)  # type: ignore[arg-type]
        with pytest.raises(BackendUnavailableError, match="model 'tiny' failed to load: "):
            await manager.start()  # the failure of the load begun early, not a second try
        assert _loads(caplog) == 1
        await manager.aclose()

    asyncio.run(scenario())


def test_a_preload_that_fails_stops_serve_with_the_error_a_request_would_get(unloadable, tmp_path):
    entry = {"name": "tiny", "backend": "llamacpp", "path": str(unloadable)}
    lazy = start_server({"profile": "dev", "profiles": {"dev": {"models": [entry]}}}, tmp_path / "lazy")
    try:
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
        reply = httpx.post(f"{lazy.v1}/chat/completions", json=chat, timeout=60)
    finally:
        lazy.stop()
    assert reply.status_code == 503
    message = reply.json()["error"]["message"]
    assert message.startswith("model 'tiny' failed to load: ")
    with pytest.raises(RuntimeError) as caught:  # the server exits before it listens
        config = {"profile": "dev", "profiles": {"dev": {"models": [{**entry, "preload": True}]}}}
        start_server(config, tmp_path / "preload")
    assert "exited with 2" in str(caught.value) and message in str(caught.value)


def test_serve_starts_without_collecting_and_listens_with_the_collector_on(tiny_llama, tmp_path):
    """The collector is off from the command line's first heavy import until the server listens
    (gateway.serve), then on, with what start-up made frozen (out of its full passes)."""
    config = tmp_path / "tandem.yaml"
    entry = {"name": "tiny", "backend": "llamacpp", "path": str(tiny_llama.gguf_path), "preload": True}
    config.write_text(json.dumps({"profile": "dev", "profiles": {"dev": {"models": [entry]}}}))
    code = (
        "import gc, json; import gateway.drain as drain; seen = {}\n"
        "async def listen(self, *args, **kwargs):\n"
        "    seen.update(on=gc.isenabled(), frozen=gc.get_freeze_count())\n"
        "drain.DrainingServer.serve = listen\n"
        "original = drain.serve_config\n"
        "def config(*args, **kwargs): seen.update(while_starting=gc.isenabled()); "
        "return original(*args, **kwargs)\n"
        "drain.serve_config = config\n"
        "from gateway.cli import main\n"
        f"status = main(['serve', '--config', {str(config)!r}])\n"
        "print(json.dumps({**seen, 'status': status, 'after': gc.isenabled()}))"
    )
    env = {**os.environ, "TANDEM_HOME": str(tmp_path / "home"), "TANDEM_PORT": "1"}
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=True)
    seen = json.loads(result.stdout.strip().rsplit("\n", 1)[-1])
    assert seen["status"] == 0 and not seen["while_starting"] and seen["on"] and seen["after"]
    frozen = seen["frozen"]
    assert frozen > 10_000  # the app, the models and their modules


def test_a_serve_that_fails_to_start_leaves_the_collector_on(unloadable, tmp_path):
    from gateway.cli import main

    config = tmp_path / "tandem.yaml"
    entry = {"name": "tiny", "backend": "llamacpp", "path": str(unloadable), "preload": True}
    config.write_text(json.dumps({"profile": "dev", "profiles": {"dev": {"models": [entry]}}}))
    assert main(["serve", "--config", str(config)]) == 2
    assert gc.isenabled()
