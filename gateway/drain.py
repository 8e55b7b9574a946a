"""Graceful shutdown: on SIGTERM stop accepting at once, let running requests finish within the drain window
(TANDEM_DRAIN_S), then end whatever still runs with a proper error instead of a cut body.

uvicorn does the first part (it closes the listening sockets, and idle keep-alive connections, as soon as
it starts shutting down) and, past its graceful timeout, cancels the requests' tasks, which truncates a
stream mid-body. So the drain window is ours: DrainingServer starts it when uvicorn starts shutting down,
and when it expires DrainMiddleware cancels each request still running and finishes its response itself:
the protocol's error event for a stream that has started (OpenAI chat SSE, the Responses API's `error`
event, Anthropic's `error` event, an Ollama NDJSON error line; then the end of the body), a 503 in the
protocol's envelope for a response that has not (Anthropic's overloaded_error, 529, as its API sheds
load). uvicorn's own timeout is set a little later, as the backstop it always was.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.anthropic_errors import (
    anthropic_error,
    anthropic_error_event,
    anthropic_status,
    is_anthropic_path,
)
from gateway.errors import OLLAMA_PREFIX
from gateway.openai_protocol import ErrorBody
from gateway.responses_events import ErrorEvent, EventSequence

logger = logging.getLogger("tandem")
FINISH_S = 3.0  # after the window: time to write the error events before uvicorn cancels what is left
SHUTTING_DOWN = "server_shutting_down"
_SSE = b"text/event-stream"
_NDJSON = b"application/x-ndjson"
_RESPONSES_PATH = "/v1/responses"


@dataclass(slots=True)
class Drain:
    """The drain window of one server, shared by DrainingServer (which starts it) and the middleware."""

    window_s: float
    running: set[asyncio.Task[object]] = field(default_factory=set)  # the tasks of requests in progress
    expired: bool = False

    def message(self) -> str:
        return (
            f"tandem is shutting down: the request was still running when its {self.window_s:g}s drain "
            "window (TANDEM_DRAIN_S) ended; retry it on another replica"
        )

    def begin(self) -> None:
        logger.info(
            "draining: %d request(s) running may finish within %gs; new connections are refused",
            len(self.running),
            self.window_s,
        )
        asyncio.get_running_loop().call_later(self.window_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self.running:
            logger.warning("drain window over: ending %d request(s) still running", len(self.running))
        for task in list(self.running):
            task.cancel(msg=SHUTTING_DOWN)


@dataclass(slots=True)
class _Response:
    started: bool = False
    ended: bool = False
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    frames: int = 0  # SSE frames a Responses stream sent: they are numbered, the drain's error is next

    def content_type(self) -> bytes:
        value = next((v for k, v in self.headers if k.lower() == b"content-type"), b"")
        return value.split(b";")[0].strip().lower()


class DrainMiddleware:
    """Outermost ASGI layer: knows each request's task, and ends it properly when the window expires."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        response = _Response()
        numbered = scope["path"].startswith(_RESPONSES_PATH)  # only its events carry a sequence number

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.started = True
                response.headers = message.get("headers", [])  # read only if the drain ends this response
            elif message["type"] == "http.response.body":
                if numbered:
                    response.frames += message.get("body", b"").count(b"\n\n")
                response.ended = not message.get("more_body", False)
            await send(message)

        self.drain.running.add(task)
        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not self.drain.expired or response.ended:
                raise
            task.uncancel()  # our own cancellation: this task now finishes the response
            await self._finish(scope, response, send)
        finally:
            self.drain.running.discard(task)

    async def _finish(self, scope: Scope, response: _Response, send: Send) -> None:
        message, path = self.drain.message(), scope["path"]
        if not response.started:
            status = 503
            body: dict[str, Any] = {"error": _error(message).model_dump()}  # OpenAI's, the Responses API's
            if path.startswith(OLLAMA_PREFIX):
                body = {"error": message}
            elif is_anthropic_path(path):
                status, body = anthropic_status(503)[0], anthropic_error(503, message).model_dump()
            headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": json.dumps(body).encode()})
            return
        content_type, tail = response.content_type(), ""
        if content_type == _SSE and is_anthropic_path(path):
            tail = anthropic_error_event(503, message)
        elif content_type == _SSE and path.startswith(_RESPONSES_PATH):
            events = EventSequence()
            events.skip(response.frames)
            tail = events.frame(ErrorEvent(code=SHUTTING_DOWN, message=message))
        elif content_type == _SSE:
            tail = f"data: {json.dumps({'error': _error(message).model_dump()})}\n\n"
        elif content_type == _NDJSON:
            tail = json.dumps({"error": message}) + "\n"
        if tail:
            await send({"type": "http.response.body", "body": tail.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def _error(message: str) -> ErrorBody:
    return ErrorBody(message=message, type="server_error", code=SHUTTING_DOWN)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, starting the drain window when it starts shutting down (SIGTERM, SIGINT)."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    async def shutdown(self, sockets: list | None = None) -> None:
        self.drain.begin()
        await super().shutdown(sockets=sockets)


def serve_config(app: ASGIApp, drain: Drain, **kwargs: Any) -> uvicorn.Config:
    """uvicorn's config for the app behind the drain middleware; its own cancellation comes after ours.
    No WebSocket protocol: tandem has no WebSocket route (an upgrade request is answered as plain HTTP),
    and uvicorn would import one at start (~20 ms of cold start)."""
    return uvicorn.Config(
        DrainMiddleware(app, drain), timeout_graceful_shutdown=int(drain.window_s + FINISH_S) + 1, ws="none",
        **kwargs,
    )  # fmt: skip
