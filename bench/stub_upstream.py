"""A minimal, fast OpenAI-compatible upstream for benchmarks: `python -m bench.stub_upstream --port N`.

HTTP/1.1 with keep-alive on a bare asyncio Protocol (no framework, no validation) so that it is never the
bottleneck of what it stands behind. It answers:

- POST /v1/chat/completions: a fixed short answer with usage; `"stream": true` gives the same answer as
  server-sent events (role, one chunk per word, finish, a usage chunk when `stream_options.include_usage`,
  then `[DONE]`), sent in one write with a Content-Length;
- GET /v1/models: one model, `stub`;
- GET /health: 200.

Anything else is 404. Request bodies must carry a Content-Length (every HTTP client used here does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time

ANSWER_WORDS = ("Hello", " from", " the", " stub", ".")
PROMPT_TOKENS = 8
COMPLETION_TOKENS = len(ANSWER_WORDS)
MAX_HEADER_BYTES = 64 * 1024


def _json(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _usage() -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    }


def chat_body(model: str) -> bytes:
    return _json(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(ANSWER_WORDS)},
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(),
        }
    )


def chat_stream_body(model: str, include_usage: bool) -> bytes:
    head = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": int(time.time())}
    head["model"] = model

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": word}) for word in ANSWER_WORDS]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append({**head, "choices": [], "usage": _usage()})
    return b"".join(b"data: " + _json(event) + b"\n\n" for event in events) + b"data: [DONE]\n\n"


MODELS_BODY = _json(
    {"object": "list", "data": [{"id": "stub", "object": "model", "created": 0, "owned_by": "bench"}]}
)


def _response(status: bytes, content_type: bytes, body: bytes, close: bool) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: " + str(len(body)).encode()
        + (b"\r\nconnection: close" if close else b"")
        + b"\r\n\r\n" + body
    )  # fmt: skip


def respond(method: bytes, path: bytes, body: bytes) -> tuple[bytes, bytes, bytes]:
    """(status, content type, body) of one request."""
    path = path.split(b"?", 1)[0]
    if method == b"POST" and path in (b"/v1/chat/completions", b"/chat/completions"):
        try:
            request = json.loads(body)
        except ValueError:
            return b"400 Bad Request", b"application/json", _json({"error": {"message": "bad JSON"}})
        model = str(request.get("model") or "stub")
        if request.get("stream"):
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            return b"200 OK", b"text/event-stream", chat_stream_body(model, include_usage)
        return b"200 OK", b"application/json", chat_body(model)
    if method == b"GET" and path in (b"/v1/models", b"/models"):
        return b"200 OK", b"application/json", MODELS_BODY
    if method == b"GET" and path == b"/health":
        return b"200 OK", b"application/json", b"{}"
    return b"404 Not Found", b"application/json", _json({"error": {"message": "not found"}})


class StubProtocol(asyncio.Protocol):
    """One connection: requests parsed from the buffer as they complete, answered in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self.transport.close()
                return
            head = self.buffer[:end].split(b"\r\n")
            length, close = 0, False
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
            if len(self.buffer) < end + 4 + length:
                return  # the body is not all here yet
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            parts = head[0].split(b" ")
            if len(parts) < 2:
                self.transport.close()
                return
            status, content_type, payload = respond(parts[0], parts[1], body)
            self.transport.write(_response(status, content_type, payload, close))
            if close:
                self.transport.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StubProtocol, host, port, backlog=4096)
    print(f"stub upstream on http://{host}:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    description = __doc__.splitlines()[0]
    parser = argparse.ArgumentParser(prog="python -m bench.stub_upstream", description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
