"""An OpenAI-compatible upstream reached directly: the request body goes out as it came in, the answer comes
back as the upstream wrote it.

For servers that already speak OpenAI's API (vLLM, llama-server, Ollama's /v1, another tandem) there is
nothing to translate, and litellm's translation layer cost ~3.7 ms of CPU per request (75% of the
gateway's time, measured in `tandem bench gateway`); this client costs a fraction of that. litellm stays
the client for providers that need translation (RemoteUpstream).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from backends.remote.upstream import UpstreamConfig, UpstreamError

CONNECT_TIMEOUT_S = 5.0


class DirectUpstream:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._base = config.api_base.rstrip("/") + "/"
        self._headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s, connect=CONNECT_TIMEOUT_S)
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
        try:
            response = await self._client().post(self._base + path, json=body)
        except TimeoutError as exc:
            raise UpstreamError(
                504, f"the upstream did not answer in time: {exc!r}", "upstream_timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(502, f"the upstream is unreachable: {exc!r}", "upstream_unreachable") from exc
        if response.status >= 400:
            content = await response.read()
            response.release()
            raise _refusal(response.status, content)
        return response

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._send(path, body)
        try:
            return json.loads(await response.read())
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(502, f"the upstream broke off: {exc!r}", "upstream_unreachable") from exc
        finally:
            response.release()

    async def _open_stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Sends the request now, so that a refusal surfaces before any response starts."""
        return _events(await self._send(path, body))

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


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The SSE stream's JSON events until [DONE]; an error event mid-stream raises."""
    try:
        async for raw in response.content:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if "error" in event and "choices" not in event:
                error = event["error"]
                message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
                raise UpstreamError(502, f"the upstream failed mid-stream: {message}", "upstream_error")
            yield event
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise UpstreamError(502, f"the upstream stream broke: {exc!r}", "upstream_unreachable") from exc
    finally:
        response.release()
