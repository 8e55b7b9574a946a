"""OpenAI requests served by a remote upstream: passed through, with limits and usage as for local models."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from backends.remote.upstream import UpstreamError
from gateway.auth import Admission
from gateway.deps import CallContext
from gateway.errors import upstream_api_error
from gateway.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    PromptTokensDetails,
    Usage,
)
from gateway.routing import RemoteModel
from gateway.streaming import SSE_DONE, SSE_HEADERS, stream_error

DEFAULT_RESERVED_COMPLETION = 1024  # tokens reserved against tpm when a request sets no max_tokens


def _payload(body: BaseModel) -> dict[str, Any]:
    """What the client sent, as it sent it: defaults the upstream should pick stay unset."""
    return body.model_dump(exclude_unset=True, exclude={"model", "stream"})


def _reservation(payload: dict[str, Any]) -> int:
    # the upstream tokenizes, not us: estimate ~4 characters a token until its usage arrives
    prompt = (
        len(json.dumps(payload.get("messages") or payload.get("prompt") or payload.get("input") or "")) // 4
    )
    completion = (
        payload.get("max_completion_tokens") or payload.get("max_tokens") or DEFAULT_RESERVED_COMPLETION
    )
    return prompt + completion * int(payload.get("n") or 1)


def upstream_usage(data: dict[str, Any]) -> Usage | None:
    """The usage an OpenAI-compatible upstream put in a reply or a chunk (None: none there), its cached
    prompt tokens included."""
    usage = data.get("usage")
    if not usage:
        return None
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))  # fmt: skip


def upstream_reasoning_tokens(data: dict[str, Any]) -> int:
    """The reasoning tokens an OpenAI-compatible upstream counted in its completion tokens (0: none said)."""
    details = (data.get("usage") or {}).get("completion_tokens_details") or {}
    return int(details.get("reasoning_tokens") or 0)


def token_counts(usage: Usage | None) -> tuple[int, int]:
    """(prompt, completion) tokens, as limits and usage records settle them; (0, 0) when none came."""
    return (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (0, 0)


async def open_stream(
    call: CallContext,
    remote: RemoteModel,
    payload: dict[str, Any],
    requested: str,
    method: str = "chat_stream",
) -> tuple[Admission, Any]:
    """Admit a streamed remote request and open the upstream's stream at once (a refusal is still a status
    code); the caller's stream ends with release_stream. The upstream is asked for usage whatever the
    client asked, so what the request used can be settled exactly."""
    payload = {**payload, "stream_options": {"include_usage": True}}
    admission = await admit_remote(call, payload)
    remote.in_flight += 1
    try:
        chunks = await getattr(remote.upstream(), method)(requested, payload)
    except BaseException:
        remote.in_flight -= 1
        await admission.settle(0, 0)
        raise
    return admission, chunks


async def release_stream(
    remote: RemoteModel, chunks: object, admission: Admission, prompt_tokens: int, completion_tokens: int
) -> None:
    """A remote stream ended (finished, failed, or its client left): free its place, hang up on the
    upstream now rather than when its connection times out, and settle what it used."""
    remote.in_flight -= 1
    close = getattr(chunks, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):  # the upstream's connection is going away either way
            await close()
    await admission.settle(prompt_tokens, completion_tokens)


async def admit_remote(call: CallContext, payload: dict[str, Any]) -> Admission:
    admission = await call.access.admit(
        call.principal, call.request.state.tandem_model, _reservation(payload)
    )
    call.request.state.ratelimit_headers = admission.headers
    return admission


async def _unary(
    call: CallContext, remote: RemoteModel, payload: dict[str, Any], method: str, requested: str
):
    admission = await admit_remote(call, payload)
    remote.in_flight += 1
    prompt = completion = 0
    try:
        data = await getattr(remote.upstream(), method)(requested, payload)
        prompt, completion = token_counts(upstream_usage(data))
        return JSONResponse(data)
    finally:
        remote.in_flight -= 1
        await admission.settle(prompt, completion)


async def _streamed(
    call: CallContext, remote: RemoteModel, payload: dict[str, Any], method: str, requested: str
) -> StreamingResponse:
    client_wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    admission, chunks = await open_stream(call, remote, payload, requested, method)

    async def events() -> AsyncIterator[str]:
        prompt = completion = 0
        try:
            async for chunk in chunks:
                if chunk.get("usage"):
                    prompt, completion = token_counts(upstream_usage(chunk))
                    if not client_wants_usage:
                        if not chunk.get("choices"):
                            continue
                        chunk = {k: v for k, v in chunk.items() if k != "usage"}
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
            yield SSE_DONE
        except UpstreamError as exc:  # too late for a status code: the error goes in the stream
            yield stream_error(upstream_api_error(exc))
        except Exception as exc:  # whatever broke, the client learns the stream failed, not a cut-off body
            yield stream_error(exc)
        finally:
            await release_stream(remote, chunks, admission, prompt, completion)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


async def remote_chat(call: CallContext, remote: RemoteModel, body: ChatCompletionRequest, requested: str):
    payload = _payload(body)
    if body.stream:
        return await _streamed(call, remote, payload, "chat_stream", requested)
    return await _unary(call, remote, payload, "chat", requested)


async def remote_completion(call: CallContext, remote: RemoteModel, body: CompletionRequest, requested: str):
    payload = _payload(body)
    if body.stream:
        return await _streamed(call, remote, payload, "completion_stream", requested)
    return await _unary(call, remote, payload, "completion", requested)


async def remote_embedding(call: CallContext, remote: RemoteModel, body: EmbeddingRequest, requested: str):
    return await _unary(call, remote, _payload(body), "embedding", requested)
