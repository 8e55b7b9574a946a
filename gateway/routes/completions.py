"""POST /v1/completions (legacy text completions; a prompt may be a string, token ids, or a batch)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from backends.base import TokenLogprob
from gateway.deps import CallContext, CallDep
from gateway.dispatch import dispatch
from gateway.generation import PreparedGeneration, completion_prompts, prepare_completion
from gateway.openai_protocol import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Usage
from gateway.registry import ManagedModel, ServedModel
from gateway.remote_serving import remote_completion
from gateway.routing import RemoteModel
from gateway.streaming import SSE_DONE, SSE_HEADERS, Generation, open_generation, sse, stream_error

router = APIRouter(prefix="/v1", tags=["completions"])


def completion_logprobs(items: list[TokenLogprob], text_offset: int = 0) -> CompletionLogprobs:
    offsets = []
    for item in items:
        offsets.append(text_offset)
        text_offset += len(item.token)
    return CompletionLogprobs(
        tokens=[item.token for item in items],
        token_logprobs=[item.logprob for item in items],
        top_logprobs=[{t: lp for _, t, lp in item.top} for item in items],
        text_offset=offsets,
    )


@router.post("/completions", response_model=None)
async def create_completion(
    body: CompletionRequest, call: CallDep
) -> Completion | StreamingResponse | JSONResponse:
    async def on_upstream(remote: RemoteModel, requested: str) -> StreamingResponse | JSONResponse:
        return await remote_completion(call, remote, body, requested)

    return await dispatch(call, body.model, lambda model: _serve(call, body, model), on_upstream)


async def _serve(
    call: CallContext, body: CompletionRequest, model: ManagedModel
) -> Completion | StreamingResponse:
    request, name = call.request, call.request.state.tandem_model
    prompts, request_id = completion_prompts(body), call.request_id

    def prepare(served: ServedModel) -> PreparedGeneration:
        # a batch of prompts fans out to len(prompts) * n choices, numbered prompt-major as OpenAI does
        parts = [
            prepare_completion(body, served, prompt, f"{request_id}-p{i}" if len(prompts) > 1 else request_id)
            for i, prompt in enumerate(prompts)
        ]
        return PreparedGeneration(
            requests=[r for part in parts for r in part.requests],
            prompt_tokens=sum(part.prompt_tokens for part in parts),
        )

    generation = await open_generation(call, model, prepare)
    completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    with_logprobs = body.logprobs is not None
    if body.stream:
        events = _stream(generation, body, name, completion_id, created)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    async with generation:
        results = await generation.collect(request)
    return Completion(
        id=completion_id,
        created=created,
        model=name,
        choices=[
            CompletionChoice(
                index=i,
                text=r.text,
                logprobs=completion_logprobs(r.logprobs) if with_logprobs else None,
                finish_reason=r.finish_reason,
            )
            for i, r in enumerate(results)
        ],
        usage=generation.usage(),
    )


async def _stream(
    generation: Generation, body: CompletionRequest, model_name: str, completion_id: str, created: int
) -> AsyncIterator[str]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
        return sse(
            Completion(id=completion_id, created=created, model=model_name, choices=choices, usage=usage)
        )

    offsets = [0] * len(generation)
    async with generation:
        try:
            async for index, piece in generation.chunks():
                logprobs = None
                if body.logprobs is not None and piece.logprobs:
                    logprobs = completion_logprobs(piece.logprobs, offsets[index])
                offsets[index] += len(piece.text)
                reason = piece.finish_reason.value if piece.finish_reason is not None else None
                if piece.text or logprobs or reason:
                    choice = CompletionChoice(
                        index=index, text=piece.text, logprobs=logprobs, finish_reason=reason
                    )
                    yield chunk([choice])
        except Exception as exc:
            yield stream_error(exc)
            return
    if include_usage:
        yield chunk([], generation.usage())
    yield SSE_DONE
