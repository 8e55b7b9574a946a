"""Concurrent llama.cpp loads leave the server's stdout and stderr where they were.

The regression: llama-cpp-python's verbose=False swaps fds 1 and 2 to /dev/null and back around each
load, which is not thread-safe (its issue #1874); concurrent loads left both on /dev/null for good, and
the server logged nothing more, tracebacks included. Six models over the tiny GGUF, loaded at once.
"""

from __future__ import annotations

import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import start_server, wait_for_log

MODELS = [f"m{i}" for i in range(6)]


@pytest.fixture(scope="module")
def six_model_server(tiny_llama, tmp_path_factory):
    entries = [{"name": name, "backend": "llamacpp", "path": str(tiny_llama.gguf_path)} for name in MODELS]
    config = {"profile": "dev", "profiles": {"dev": {"models": entries}}}
    env = {"TANDEM_MAX_LOADED_MODELS": "6", "TANDEM_LLAMACPP_THREADS": "1"}
    server = start_server(config, tmp_path_factory.mktemp("six-models"), env=env)
    yield server
    server.stop()


def test_concurrent_loads_keep_the_log(six_model_server):
    server = six_model_server

    def first_use(name: str) -> httpx.Response:
        body = {"model": name, "prompt": "hi", "max_tokens": 2}
        return httpx.post(f"{server.v1}/completions", json=body, timeout=120)

    with ThreadPoolExecutor(len(MODELS)) as pool:  # every model's first request: six loads at once
        responses = list(pool.map(first_use, MODELS))
    assert [r.status_code for r in responses] == [200] * len(MODELS), [r.text for r in responses]
    loaded = httpx.get(f"{server.base_url}/health").json()["loaded"]
    assert sorted(loaded) == MODELS

    log_file = os.path.realpath(server.log_path)
    for fd in (1, 2):  # the process's own stdout and stderr still lead to its log
        assert os.path.realpath(f"/proc/{server.process.pid}/fd/{fd}") == log_file
    marker = f"marker-{uuid.uuid4().hex}"
    httpx.get(f"{server.v1}/models/{marker}")  # a later request's access-log line reaches the log
    wait_for_log(server, marker)


def test_llama_cpp_logs_through_python_logging(tiny_llama, caplog, capfd):
    from backends.llamacpp.session import LlamaSession

    with caplog.at_level(logging.DEBUG, logger="tandem.llamacpp.native"):
        session = LlamaSession.open(tiny_llama.gguf_path, context_length=128, threads=1)
        session.close()
    native = [r.getMessage() for r in caplog.records if r.name == "tandem.llamacpp.native"]
    assert any(line.startswith("llama_model_loader:") for line in native), native[:5]
    captured = capfd.readouterr()
    assert "llama_model_loader" not in captured.err + captured.out  # none of it on the fds themselves
    assert "Using gguf chat template" not in captured.err
