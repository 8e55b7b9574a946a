"""POST /v1/chat/completions."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from backends.base import TokenLogprob
from gateway.deps import CallContext, CallDep
from gateway.dispatch import dispatch
from gateway.generation import prepare_chat
from gateway.openai_protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChatTokenLogprob,
    TopLogprob,
    Usage,
)
from gateway.registry import ManagedModel
from gateway.remote_serving import remote_chat
from gateway.routing import RemoteModel
from gateway.streaming import SSE_DONE, SSE_HEADERS, Generation, open_generation, sse, stream_error
from gateway.structured_output import openai_structured

router = APIRouter(prefix="/v1", tags=["chat"])


def chat_logprobs(items: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=item.token,
                logprob=item.logprob,
                bytes=list(item.token.encode()),
                top_logprobs=[
                    TopLogprob(token=t, logprob=lp, bytes=list(t.encode())) for _, t, lp in item.top
                ],
            )
            for item in items
        ]
    )


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, call: CallDep
) -> ChatCompletion | StreamingResponse | JSONResponse:
    async def on_upstream(remote: RemoteModel, requested: str) -> StreamingResponse | JSONResponse:
        return await remote_chat(call, remote, body, requested)

    return await dispatch(call, body.model, lambda model: _serve(call, body, model), on_upstream)


async def _serve(
    call: CallContext, body: ChatCompletionRequest, model: ManagedModel
) -> ChatCompletion | StreamingResponse:
    request, request_id = call.request, call.request_id
    name = request.state.tandem_model
    structured = await asyncio.to_thread(openai_structured, body.response_format)
    generation = await open_generation(call, model, lambda m: prepare_chat(body, m, request_id, structured))
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        events = _stream(generation, body, name, completion_id, created)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    async with generation:
        results = await generation.collect(request)
    return ChatCompletion(
        id=completion_id,
        created=created,
        model=name,
        choices=[
            ChatChoice(
                index=i,
                message=AssistantMessage(content=r.text),
                logprobs=chat_logprobs(r.logprobs) if body.logprobs else None,
                finish_reason=r.finish_reason,
            )
            for i, r in enumerate(results)
        ],
        usage=generation.usage(),
    )


async def _stream(
    generation: Generation, body: ChatCompletionRequest, model_name: str, completion_id: str, created: int
) -> AsyncIterator[str]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
        return sse(
            ChatCompletionChunk(
                id=completion_id, created=created, model=model_name, choices=choices, usage=usage
            )
        )

    async with generation:
        n = len(generation)
        for i in range(n):
            yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
        try:
            async for index, piece in generation.chunks():
                logprobs = chat_logprobs(piece.logprobs) if body.logprobs and piece.logprobs else None
                if piece.text or logprobs:
                    delta = ChatDelta(content=piece.text)
                    yield chunk([ChatChunkChoice(index=index, delta=delta, logprobs=logprobs)])
                if piece.finish_reason is not None:
                    reason = piece.finish_reason.value
                    yield chunk([ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=reason)])
        except Exception as exc:
            yield stream_error(exc)
            return
    if include_usage:
        yield chunk([], generation.usage())
    yield SSE_DONE
