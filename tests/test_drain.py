"""SIGTERM on a real server: new connections are refused at once, running requests may finish within the drain
window (TANDEM_DRAIN_S), and a stream still open when it ends gets a proper error event (OpenAI SSE) or
error line (Ollama NDJSON), never a truncated body.

The stream that outlives the window comes from an upstream that never stops streaming (a few lines of
HTTP below: tandem relays it like any remote model); the tiny model's streams beside it, one running and
one queued behind it on llama.cpp, either complete or end with an error event.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.conftest import model_entry, start_server, wait_for_log

DRAIN_S = 2


class _EndlessStream(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: an SSE stream of one word every 50 ms, for as long as anyone listens."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        head = {"id": "chatcmpl-endless", "object": "chat.completion.chunk", "created": 0, "model": "endless"}
        try:
            for i in range(2400):  # two minutes at most: the test is over long before
                delta = {"role": "assistant", "content": ""} if i == 0 else {"content": " word"}
                event = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                data = f"data: {json.dumps(event)}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):  # tandem let go of it: that is the point
            return


@pytest.fixture
def endless_upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EndlessStream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


class _Reader(threading.Thread):
    """Reads one streamed response to its end (or until it breaks) and keeps every line."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body = url, body
        self.lines: list[str] = []
        self.started = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url, json=self.body, timeout=60) as response:
                assert response.status_code == 200, response.read()
                for line in response.iter_lines():
                    if line:
                        self.lines.append(line)
                        self.started.set()
        except BaseException as exc:  # a truncated body lands here (httpx.RemoteProtocolError)
            self.failure = exc
        finally:
            self.started.set()


def _sse_events(lines: list[str]) -> list[dict | str]:
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines]


def test_sigterm_drains_then_ends_open_streams_with_an_error_event(tiny_llama, tmp_path, endless_upstream):
    entry = model_entry(tiny_llama, "dev", preload=True, context_length=2048)
    endless = {"name": "endless", "backend": "remote", "remote": {"api_base": endless_upstream}}
    config = {"profile": "dev", "profiles": {"dev": {"models": [entry, endless]}}}
    env = {"TANDEM_DRAIN_S": str(DRAIN_S), "TANDEM_LLAMACPP_THREADS": "1"}
    server = start_server(config, tmp_path, env=env)
    try:
        chat = {"messages": [{"role": "user", "content": "Tell me a story."}], "stream": True}
        long_story = {**chat, "model": "tiny", "max_tokens": 1500, "ignore_eos": True}
        long_chat = {**chat, "model": "tiny", "options": {"num_predict": 1500}}
        readers = [
            _Reader(f"{server.v1}/chat/completions", {**chat, "model": "endless"}),
            _Reader(f"{server.base_url}/api/chat", long_chat),  # running on llama.cpp
            _Reader(f"{server.v1}/chat/completions", long_story),  # queued behind it: the role chunk only
        ]
        for reader in readers:
            reader.start()
            assert reader.started.wait(30) and reader.lines, reader.failure
        before_sigterm = len(readers[0].lines)
        server.process.send_signal(signal.SIGTERM)
        wait_for_log(server, "Waiting for connections to close")  # uvicorn says it once it stopped listening
        with pytest.raises(httpx.ConnectError):  # a new connection is refused at once
            httpx.get(f"{server.base_url}/health", timeout=5)
        for reader in readers:
            reader.join(30)
            assert not reader.is_alive() and reader.failure is None, reader.failure  # never a cut body

        endless_events = _sse_events(readers[0].lines)
        assert endless_events[-1]["error"]["code"] == "server_shutting_down", endless_events[-3:]
        assert "TANDEM_DRAIN_S" in endless_events[-1]["error"]["message"]
        assert len(endless_events) > before_sigterm + 1  # it kept streaming during the window

        running = [json.loads(line) for line in readers[1].lines]
        assert running[-1].get("done") is True or "TANDEM_DRAIN_S" in running[-1]["error"], running[-3:]
        queued = _sse_events(readers[2].lines)
        finished = queued[-1] == "[DONE]" and queued[-2]["choices"][0]["finish_reason"] == "length"
        assert finished or queued[-1]["error"]["code"] == "server_shutting_down", queued[-3:]

        # uvicorn re-raises the SIGTERM it handled once it has shut down: a signalled process's usual exit
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "drain window over: ending" in server.log()
    finally:
        server.stop()
