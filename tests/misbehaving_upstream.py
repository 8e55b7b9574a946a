"""An OpenAI-compatible upstream that misbehaves on purpose, the way real servers and proxies do under faults.

A real upstream cannot be made to stall or drop a pooled connection on cue, hence this one: raw HTTP/1.1
on asyncio streams, on a thread of its own, on loopback. The first path segment picks the behaviour, so one
server stands behind several remote models: `http://127.0.0.1:PORT/<behaviour>/v1`.

- ok: a normal answer (JSON, or SSE with a Content-Length), on a keep-alive connection;
- stale: like ok, but a second request on the same connection is read and then the connection is closed
  without an answer, as when a server's keep-alive timeout races the client's next request;
- silent: reads the request and never answers;
- stall: sends the headers and one event, then nothing;
- slow: streams EVENTS events GAP_S apart (chunked), then [DONE];
- broken: streams two events, then drops the connection mid-body;
- plain: answers a stream request with 200 text/plain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable

SLOW_EVENTS = 8
SLOW_GAP_S = 0.4


def _chunk(content: str | None = None, finish: str | None = None, role: str | None = None) -> bytes:
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    event = {"id": "chatcmpl-mis", "object": "chat.completion.chunk", "created": int(time.time()),
             "model": "mis", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _answer() -> bytes:
    message = {"role": "assistant", "content": "fine"}
    return json.dumps({
        "id": "chatcmpl-mis", "object": "chat.completion", "created": int(time.time()), "model": "mis",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }).encode()  # fmt: skip


def _head(content_type: str, length: int | None = None) -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{framing}\r\n\r\n".encode()


def _framed(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class MisbehavingUpstream:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="misbehaving-upstream", daemon=True)
        self.port = 0
        self.requests: dict[str, int] = {}  # behaviour -> requests received
        self._thread.start()
        self._ready.wait(10)

    def base(self, behaviour: str) -> str:
        return f"http://127.0.0.1:{self.port}/{behaviour}/v1"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.close()

    def stop(self) -> None:
        async def shutdown() -> None:  # the connections still stalling on purpose
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                               if line.lower().startswith("content-length:")), 0)  # fmt: skip
                body = json.loads(await reader.readexactly(length) or b"{}")
                behaviour = path.strip("/").split("/")[0]
                self.requests[behaviour] = self.requests.get(behaviour, 0) + 1
                served += 1
                if behaviour == "stale" and served > 1:
                    return  # closes the connection, the request unanswered
                await self._behaviours()[behaviour if behaviour != "stale" else "ok"](writer, body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _behaviours(self) -> dict[str, Callable[[asyncio.StreamWriter, dict], Awaitable[None]]]:
        return {"ok": self._ok, "silent": self._silent, "stall": self._stall, "slow": self._slow,
                "broken": self._broken, "plain": self._plain}  # fmt: skip

    async def _ok(self, writer: asyncio.StreamWriter, body: dict) -> None:
        if body.get("stream"):
            events = _chunk(role="assistant", content="") + _chunk("fine") + _chunk(finish="stop")
            events += b"data: [DONE]\n\n"
            writer.write(_head("text/event-stream", len(events)) + events)
        else:
            answer = _answer()
            writer.write(_head("application/json", len(answer)) + answer)

    async def _silent(self, writer: asyncio.StreamWriter, body: dict) -> None:
        await asyncio.sleep(3600)

    async def _stall(self, writer: asyncio.StreamWriter, body: dict) -> None:
        writer.write(_head("text/event-stream") + _framed(_chunk(role="assistant", content="")))
        await writer.drain()
        await asyncio.sleep(3600)

    async def _slow(self, writer: asyncio.StreamWriter, body: dict) -> None:
        writer.write(_head("text/event-stream") + _framed(_chunk(role="assistant", content="")))
        for i in range(SLOW_EVENTS):
            await asyncio.sleep(SLOW_GAP_S)
            writer.write(_framed(_chunk(f"w{i} ")))
            await writer.drain()
        writer.write(_framed(_chunk(finish="stop") + b"data: [DONE]\n\n") + b"0\r\n\r\n")

    async def _broken(self, writer: asyncio.StreamWriter, body: dict) -> None:
        writer.write(_head("text/event-stream") + _framed(_chunk(role="assistant", content="")))
        writer.write(_framed(_chunk("half")))
        await writer.drain()
        writer.transport.abort()
        raise ConnectionError("dropped on purpose")

    async def _plain(self, writer: asyncio.StreamWriter, body: dict) -> None:
        text = b"upstream maintenance page\n"
        writer.write(_head("text/plain", len(text)) + text)
