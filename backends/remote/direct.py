"""An OpenAI-compatible upstream reached directly: the request body goes out as it came in, the answer comes
back as the upstream wrote it.

For servers that already speak OpenAI's API (vLLM, llama-server, Ollama's /v1, another tandem) there is
nothing to translate, and litellm's translation layer cost ~3.7 ms of CPU per request (75% of the
gateway's time, measured in `tandem bench gateway`); this client costs a fraction of that. litellm stays
the client for providers that need translation (RemoteUpstream).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from backends.remote.upstream import UpstreamConfig, UpstreamError, UpstreamTimeouts

logger = logging.getLogger("tandem.remote")
_EVENT_STREAM = "text/event-stream"


class DirectUpstream:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._base = config.api_base.rstrip("/") + "/"
        self._headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        # aiohttp bounds the connect; the first byte and the gaps between chunks are bounded below, each
        # with its own deadline (aiohttp's sock_read would give the first byte only the idle timeout)
        connect = config.timeouts.connect_s
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # one pooled, keep-alive session per upstream, made in the loop that uses it
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, timeout=self._timeout
            )
        return self._session

    def _body(self, requested_model: str, payload: Mapping[str, Any], stream: bool) -> dict[str, Any]:
        return {**payload, "model": self.config.model or requested_model, "stream": stream}

    async def _send(self, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """The response, its headers read; the upstream's refusal raised as an UpstreamError."""
        first_byte = self.config.timeouts.first_byte_s
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(first_byte):
                    response = await self._client().post(self._base + path, json=body)
                break
            except TimeoutError as exc:
                if isinstance(exc, aiohttp.ServerTimeoutError):  # aiohttp's own: only connect is set
                    message = f"could not connect to the upstream within {self.config.timeouts.connect_s:g}s"
                else:
                    message = f"the upstream did not answer within {first_byte:g}s"
                raise UpstreamError(504, message, "upstream_timeout") from exc
            except aiohttp.ClientConnectorError as exc:  # no connection at all: nothing stale to retry
                raise _unreachable(exc) from exc
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # a pooled keep-alive connection the upstream had closed meanwhile ("Can not write request
                # body", "Server disconnected"), before any byte of an answer: once more, on a fresh one
                if attempt == 1:
                    logger.info("upstream %s dropped a pooled connection (%r): retrying", self._base, exc)
                    continue
                raise _unreachable(exc) from exc
            except aiohttp.ClientError as exc:
                raise _unreachable(exc) from exc
        if response.status >= 400:
            try:
                content = await _read(response, self.config.timeouts.idle_s, limit=64 * 1024)
            finally:
                response.release()
            raise _refusal(response.status, content)
        return response

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._send(path, body)
        try:
            timeouts = self.config.timeouts
            content = await _read(response, timeouts.idle_s, first_s=timeouts.first_byte_s)
        finally:
            response.release()
        try:
            return json.loads(content)
        except ValueError:
            snippet = content[:200].decode("utf-8", errors="replace")
            message = f"the upstream's answer is not JSON: {snippet!r}"
            raise UpstreamError(502, message, "upstream_error") from None

    async def _open_stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Sends the request now, so that a refusal surfaces before any response starts."""
        response = await self._send(path, body)
        if response.content_type != _EVENT_STREAM:  # e.g. a proxy's 200 text/plain page: not an answer
            try:
                snippet = (await _read(response, self.config.timeouts.idle_s, limit=200)).decode(
                    "utf-8", errors="replace"
                )
            finally:
                response.release()
            raise UpstreamError(
                502,
                f"the upstream answered a stream request with {response.content_type or 'no content type'}, "
                f"not an event stream: {snippet!r}",
                "upstream_error",
            )
        return _events(response, self.config.timeouts)

    async def chat(self, requested_model: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await self._post("chat/completions", self._body(requested_model, payload, False))

    async def chat_stream(
        self, requested_model: str, payload: Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        return await self._open_stream("chat/completions", self._body(requested_model, payload, True))

    async def completion(self, requested_model: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await self._post("completions", self._body(requested_model, payload, False))

    async def completion_stream(
        self, requested_model: str, payload: Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        return await self._open_stream("completions", self._body(requested_model, payload, True))

    async def embedding(self, requested_model: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        body = {**payload, "model": self.config.model or requested_model}
        return await self._post("embeddings", body)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _unreachable(exc: Exception) -> UpstreamError:
    return UpstreamError(502, f"the upstream is unreachable: {exc!r}", "upstream_unreachable")


def _refusal(status: int, content: bytes) -> UpstreamError:
    """The upstream's own error, in its own words when it used OpenAI's envelope."""
    message, code = content.decode("utf-8", errors="replace")[:2000] or f"HTTP {status}", None
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        message, code = str(error.get("message") or message), error.get("code")
    elif isinstance(error, str):  # Ollama's envelope
        message = error
    if code is None and status >= 500:
        code = "upstream_error"
    return UpstreamError(status, message, code)


async def _read(
    response: aiohttp.ClientResponse, idle_s: float, limit: int | None = None, first_s: float | None = None
) -> bytes:
    """The body, each piece within idle_s of the one before (a total deadline would cut long answers); the
    first within first_s, when the headers may come before the answer is ready."""
    parts: list[bytes] = []
    size, wait = 0, first_s or idle_s
    try:
        while limit is None or size < limit:
            async with asyncio.timeout(wait):
                part = await response.content.readany()
            if not part:
                break
            parts.append(part)
            size, wait = size + len(part), idle_s
    except TimeoutError:
        message = f"the upstream's answer stalled for {wait:g}s"
        raise UpstreamError(504, message, "upstream_timeout") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(502, f"the upstream broke off: {exc!r}", "upstream_unreachable") from exc
    return b"".join(parts)[:limit]


async def _events(
    response: aiohttp.ClientResponse, timeouts: UpstreamTimeouts
) -> AsyncIterator[dict[str, Any]]:
    """The SSE stream's JSON events until [DONE]. A mid-stream error event, a stall, a broken connection or
    an end without [DONE] raise UpstreamError: the client gets an error event, never a silently cut body."""
    wait = timeouts.first_byte_s  # until the first event, the upstream may still be reading the prompt
    try:
        while True:
            try:
                async with asyncio.timeout(wait):
                    raw = await response.content.readline()
            except TimeoutError:
                raise UpstreamError(
                    504, f"the upstream's stream went silent for {wait:g}s", "upstream_timeout"
                ) from None
            if not raw:
                raise UpstreamError(502, "the upstream's stream ended before [DONE]", "upstream_error")
            wait = timeouts.idle_s
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue  # blank separators, comments (": keep-alive"), event names
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError:
                message = f"the upstream sent an event that is not JSON: {data[:200]!r}"
                raise UpstreamError(502, message, "upstream_error") from None
            if isinstance(event, dict) and "error" in event and "choices" not in event:
                error = event["error"]
                message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
                raise UpstreamError(502, f"the upstream failed mid-stream: {message}", "upstream_error")
            if not isinstance(event, dict):
                raise UpstreamError(502, f"the upstream sent an event that is not an object: {data[:200]!r}",
                                    "upstream_error")  # fmt: skip
            yield event
    except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a line over aiohttp's buffer limit
        raise UpstreamError(502, f"the upstream stream broke: {exc!r}", "upstream_unreachable") from exc
    finally:
        response.release()
