"""The cold-start benchmark's timing of one start, on the tiny model: a tandem start (the console script
`make serve` runs) and, where `make llama-server` built it, llama-server's, on the same file. No timings
are checked, only that each start is timed from spawn to /health to a first token, and then stopped."""

from __future__ import annotations

import json
import socket

import pytest

from bench.cold_start import measure, peer_start, tandem_start
from bench.gateway_servers import free_port
from bench.serve_peers import default_llama_server


def test_a_tandem_start_is_timed_to_its_first_token(tiny_llama, tmp_path):
    config = tmp_path / "tandem.yaml"
    entry = {"name": "tiny", "backend": "llamacpp", "path": str(tiny_llama.gguf_path), "preload": True,
             "aliases": ["default"]}  # fmt: skip
    config.write_text(json.dumps({"profile": "dev", "profiles": {"dev": {"models": [entry]}}}))
    port = free_port()
    start = tandem_start("dev", config, make=False, port=port, home=str(tmp_path / "home"))
    timed = measure(start, port, str(tmp_path), timeout=120)
    assert 0 < timed.healthy_s < timed.first_token_s < 120
    with pytest.raises(OSError):  # stopped
        socket.create_connection(("127.0.0.1", port), timeout=1)


NO_LLAMA_SERVER = not default_llama_server().is_file()


@pytest.mark.skipif(NO_LLAMA_SERVER, reason="llama-server is not built (make llama-server)")
def test_a_llama_server_start_is_timed_the_same_way(tiny_llama, tmp_path):
    port = free_port()
    timed = measure(peer_start("llama-server", tiny_llama.gguf_path, port), port, str(tmp_path), timeout=120)
    assert 0 < timed.healthy_s < timed.first_token_s < 120
