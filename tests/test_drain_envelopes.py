"""The drain window's end, per protocol: a request still running gets its own protocol's error, in the
envelope (not started) or as the stream's error event (started), never another protocol's.

The DrainMiddleware runs in-process around an app that answers on the paths the routes serve and then
never finishes (what a generation outliving the window looks like to the middleware); the real-server
SIGTERM path is tests/test_drain.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.drain import Drain, DrainMiddleware

WINDOW_S = 0.05


def _hanging_app(content_type: bytes | None, frames: list[bytes]):
    """Starts a response of `content_type` with `frames` (None: starts nothing), then hangs."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if content_type is not None:
            headers = [(b"content-type", content_type + b"; charset=utf-8")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for frame in frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        await asyncio.Event().wait()

    return app


def _drained(path: str, content_type: bytes | None, frames: list[bytes] = ()) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def main() -> None:
        drain = Drain(WINDOW_S)
        middleware = DrainMiddleware(_hanging_app(content_type, list(frames)), drain)
        scope = {"type": "http", "path": path, "method": "POST", "headers": []}
        task = asyncio.create_task(middleware(scope, receive, send))
        await asyncio.sleep(0)
        drain.begin()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert sent[-1] == {"type": "http.response.body", "body": b""} or not sent[-1].get("more_body")
    return sent


def _status_and_body(sent: list[Message]) -> tuple[int, dict]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body)


def _tail(sent: list[Message]) -> str:
    return sent[-2]["body"].decode()


@pytest.mark.parametrize(
    ("path", "status", "check"),
    [
        ("/v1/chat/completions", 503, lambda b: b["error"]["code"] == "server_shutting_down"),
        ("/v1/responses", 503, lambda b: b["error"]["code"] == "server_shutting_down"),
        ("/api/chat", 503, lambda b: "TANDEM_DRAIN_S" in b["error"]),
        ("/v1/messages", 529, lambda b: b["type"] == "error" and b["error"]["type"] == "overloaded_error"),
    ],
)
def test_a_response_not_started_gets_a_503_in_its_protocols_envelope(path, status, check):
    got_status, body = _status_and_body(_drained(path, None))
    assert got_status == status and check(body), body


def test_an_anthropic_stream_ends_with_anthropics_error_event():
    started = b'event: message_start\ndata: {"type": "message_start"}\n\n'
    tail = _tail(_drained("/v1/messages", b"text/event-stream", [started]))
    event, data = tail.strip().split("\n")
    assert event == "event: error"
    payload = json.loads(data.removeprefix("data: "))
    assert payload["type"] == "error" and payload["error"]["type"] == "overloaded_error"
    assert "TANDEM_DRAIN_S" in payload["error"]["message"]


def test_a_responses_stream_ends_with_an_error_event_numbered_after_the_last():
    frames = [
        b'event: response.created\ndata: {"type": "response.created", "sequence_number": 0}\n\n',
        b'event: response.in_progress\ndata: {"type": "response.in_progress", "sequence_number": 1}\n\n'
        b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", '
        b'"sequence_number": 2}\n\n',
    ]
    tail = _tail(_drained("/v1/responses", b"text/event-stream", frames))
    event, data = tail.strip().split("\n")
    assert event == "event: error"
    payload = json.loads(data.removeprefix("data: "))
    assert payload["type"] == "error" and payload["code"] == "server_shutting_down"
    assert payload["sequence_number"] == 3


def test_a_chat_stream_ends_with_an_openai_error_chunk():
    tail = _tail(_drained("/v1/chat/completions", b"text/event-stream", [b"data: {}\n\n"]))
    assert json.loads(tail.removeprefix("data: "))["error"]["code"] == "server_shutting_down"
