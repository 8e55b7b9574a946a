"""An OpenAI-compatible upstream (vLLM, Ollama, llama-server, OpenAI itself, another tandem) through litellm.

Unlike the local backends this one works at the level of API requests, not tokens: the upstream owns
tokenization and sampling, tandem forwards the request and passes the answer through, chunk by chunk.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backends.base import BackendError

logger = logging.getLogger("tandem.remote")

# OpenAI request fields litellm takes as arguments; the rest (top_k, min_p, ...) travel in extra_body
_NATIVE_FIELDS = frozenset(
    {"temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens", "presence_penalty",
     "frequency_penalty", "logit_bias", "user", "seed", "logprobs", "top_logprobs", "response_format",
     "tools", "tool_choice", "parallel_tool_calls", "stream_options", "suffix", "echo", "best_of",
     "dimensions", "encoding_format"}
)  # fmt: skip


class UpstreamError(BackendError):
    """The upstream refused or failed; `status` is what the client gets (the upstream's own, if any)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """Separate deadlines, as nginx's proxy_*_timeout and LiteLLM's: one total deadline would cut healthy
    long streams, and none at all lets an upstream that went silent hold its client forever."""

    connect_s: float = 10.0  # to open the TCP (and TLS) connection
    first_byte_s: float = 600.0  # to the answer's first byte; for a stream, its first event (prefill time)
    idle_s: float = 60.0  # between two pieces of the answer once it started


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    api_base: str
    model: str | None  # the upstream's name for the model; None: the name the client asked for
    api_key: str | None
    provider: str = "openai"  # litellm's provider prefix: openai-compatible by default
    timeouts: UpstreamTimeouts = UpstreamTimeouts()


def timeout_error(message: str) -> UpstreamError:
    return UpstreamError(504, message, "upstream_timeout")


def _litellm():
    # litellm fetches a price list at import unless told not to; this machine (and many servers) is offline
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


def _error(exc: Exception) -> UpstreamError:
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    # litellm prefixes messages with its own class names ("litellm.NotFoundError: OpenAIException - ...")
    message = str(getattr(exc, "message", None) or exc).split("Exception - ", 1)[-1].strip()
    if "Timeout" in name:
        return UpstreamError(504, f"the upstream did not answer in time: {message}", "upstream_timeout")
    if "ContextWindowExceeded" in name:
        return UpstreamError(400, message, "context_length_exceeded")
    if "Connection" in name or "Connection error" in message or not isinstance(status, int):
        return UpstreamError(502, f"the upstream is unreachable: {message}", "upstream_unreachable")
    return UpstreamError(status, message, "upstream_error" if status >= 500 else None)


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    """Back to OpenAI's shape: litellm adds provider_specific_fields and an empty choice to usage chunks."""
    data.pop("provider_specific_fields", None)
    choices = data.get("choices") or []
    for choice in choices:
        choice.pop("provider_specific_fields", None)
        for part in ("message", "delta"):
            if isinstance(choice.get(part), dict):
                choice[part].pop("provider_specific_fields", None)
    if data.get("usage") and all(not c.get("delta") and not c.get("finish_reason") for c in choices):
        data["choices"] = []
    return data


class RemoteUpstream:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._litellm = _litellm()

    def _arguments(self, requested_model: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        import httpx  # litellm imports it anyway; `tandem serve` without remote models need not

        config, timeouts = self.config, self.config.timeouts
        arguments: dict[str, Any] = {
            "model": f"{config.provider}/{config.model or requested_model}",
            "api_base": config.api_base,
            "api_key": config.api_key or "unused",  # OpenAI-compatible servers without keys accept any
            # httpx's read timeout is per read: the first byte's is the longer one; ours below tell them apart
            "timeout": httpx.Timeout(max(timeouts.first_byte_s, timeouts.idle_s), connect=timeouts.connect_s),
            "max_retries": 0,  # tandem's router retries, on another deployment if there is one
        }
        extra: dict[str, Any] = {}
        for name, value in payload.items():
            if name in ("model", "stream"):
                continue
            (arguments if name in _NATIVE_FIELDS or name in ("messages", "prompt", "input") else extra)[
                name
            ] = value
        if extra:
            arguments["extra_body"] = extra
        return arguments

    async def _answer(self, call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
        """A whole (unstreamed) answer: it comes in one piece, so within the first byte's deadline."""
        seconds = self.config.timeouts.first_byte_s
        try:
            async with asyncio.timeout(seconds):
                response = await _retrying_stale(call)
        except TimeoutError:
            raise timeout_error(f"the upstream did not answer within {seconds:g}s") from None
        except Exception as exc:
            raise _error(exc) from exc
        return _clean(response.model_dump(exclude_none=True))

    def _chat_arguments(self, requested_model: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        # litellm (1.106) sends any request with tools through its MCP gateway check, which imports the
        # `mcp` package (litellm's proxy extra, not installed here); tandem passes function tools only
        return {**self._arguments(requested_model, payload), "_skip_mcp_handler": True}

    async def chat(self, requested_model: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        arguments = self._chat_arguments(requested_model, payload)
        return await self._answer(lambda: self._litellm.acompletion(**arguments, stream=False))

    async def chat_stream(
        self, requested_model: str, payload: Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Opens the stream now (so a refusal surfaces before any response starts) and yields its chunks."""
        arguments = self._chat_arguments(requested_model, payload)
        return await _open(lambda: self._litellm.acompletion(**arguments, stream=True), self.config.timeouts)

    async def completion_stream(
        self, requested_model: str, payload: Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        arguments = self._arguments(requested_model, payload)
        return await _open(
            lambda: self._litellm.atext_completion(**arguments, stream=True), self.config.timeouts
        )

    async def completion(self, requested_model: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        arguments = self._arguments(requested_model, payload)
        return await self._answer(lambda: self._litellm.atext_completion(**arguments))

    async def aclose(self) -> None:
        """litellm keeps its own client cache; nothing of ours to close."""

    async def embedding(self, requested_model: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        arguments = self._arguments(requested_model, payload)
        return await self._answer(lambda: self._litellm.aembedding(**arguments))


async def _retrying_stale(call: Callable[[], Awaitable[Any]]) -> Any:
    """Once more when the connection broke before any answer: most often a pooled keep-alive connection the
    upstream had closed meanwhile (httpx and litellm, with max_retries 0, do not retry it themselves)."""
    try:
        return await call()
    except Exception as exc:
        if not _connection_broke(exc):
            raise
        logger.info("upstream connection broke before an answer (%s): retrying", exc)
    return await call()


def _connection_broke(exc: BaseException | None) -> bool:
    """Whether openai's APIConnectionError (not its timeout) is in the chain: litellm re-raises it wrapped,
    as an InternalServerError."""
    while exc is not None:
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "APIConnectionError" in names:
            return "APITimeoutError" not in names
        exc = exc.__cause__ or exc.__context__
    return False


async def _open(
    opening: Callable[[], Awaitable[Any]], timeouts: UpstreamTimeouts
) -> AsyncIterator[dict[str, Any]]:
    try:
        async with asyncio.timeout(timeouts.first_byte_s):
            iterator = (await _retrying_stale(opening)).__aiter__()
            first = await iterator.__anext__()
    except StopAsyncIteration:
        first, iterator = None, None
    except TimeoutError:
        raise timeout_error(f"the upstream sent nothing within {timeouts.first_byte_s:g}s") from None
    except Exception as exc:
        raise _error(exc) from exc
    return _chunks(first, iterator, timeouts.idle_s)


async def _chunks(first: Any, iterator: Any, idle_s: float) -> AsyncIterator[dict[str, Any]]:
    if first is None:
        return
    yield _clean(first.model_dump(exclude_none=True))
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise timeout_error(f"the upstream's stream went silent for {idle_s:g}s") from None
        except Exception as exc:
            raise _error(exc) from exc
        yield _clean(chunk.model_dump(exclude_none=True))
