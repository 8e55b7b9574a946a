"""POST /v1/chat/completions."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from backends.base import StructuredOutput, TokenLogprob
from backends.conversation import Conversation, ToolCall
from backends.tool_forced import forced_call_output
from backends.tools.events import ContentDelta, ToolCallArguments, ToolCallBegin
from gateway.deps import CallContext, CallDep
from gateway.dispatch import dispatch
from gateway.errors import bad_request
from gateway.generation import PreparedGeneration, prepare_chat
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
    FunctionCallDelta,
    FunctionCallOut,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
    Usage,
)
from gateway.registry import ManagedModel, ServedModel
from gateway.remote_serving import remote_chat
from gateway.routing import RemoteModel
from gateway.streaming import SSE_DONE, SSE_HEADERS, Generation, open_generation, sse, stream_error
from gateway.structured_output import checked_structured, openai_structured
from gateway.tool_calls import (
    OutputEvent,
    ReasoningText,
    ToolCallReader,
    ToolPlan,
    finish_reason,
    read_all,
    tool_plan,
    with_strict_calls,
)
from gateway.tool_conversation import openai_conversation

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


def _structured(body: ChatCompletionRequest, conversation: Conversation) -> StructuredOutput | None:
    """The response format's grammar, or a forced call's (checked here, so that it is a 400 at once)."""
    forced = forced_call_output(conversation)
    if forced is None:
        return openai_structured(body.response_format)
    if body.response_format is not None and body.response_format.type != "text":
        raise bad_request("A forced tool call ('tool_choice' required or a function) cannot be combined "
                          "with 'response_format'.", param="tool_choice")  # fmt: skip
    return checked_structured(forced, "tool_choice")


def _prepared(body: ChatCompletionRequest) -> tuple[Conversation, StructuredOutput | None]:
    conversation = openai_conversation(body)
    return conversation, _structured(body, conversation)


async def _serve(
    call: CallContext, body: ChatCompletionRequest, model: ManagedModel
) -> ChatCompletion | StreamingResponse:
    request, request_id = call.request, call.request_id
    name = request.state.tandem_model
    conversation, structured = await asyncio.to_thread(_prepared, body)

    def prepare(served: ServedModel) -> PreparedGeneration:
        prepared = prepare_chat(body, served, conversation, request_id, structured)
        return with_strict_calls(prepared, conversation, served)  # the prompt's tool format decides it

    generation = await open_generation(call, model, prepare)
    plan = tool_plan(conversation, generation.prompt, model.spec.tool_parser, strict_grammar=True)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        events = _stream(generation, body, plan, name, completion_id, created)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    async with generation:
        results = await generation.collect(request)
    choices = []
    for i, r in enumerate(results):
        content: str | None = r.text
        calls: list[ToolCall] = []
        reasoning = None
        reader: ToolCallReader | None = None
        if plan is not None:
            reader = read_all(plan, r.text)
            content, calls, reasoning = reader.content, reader.calls, reader.reasoning or None
        message = AssistantMessage(
            content=content if content or not calls else None,
            tool_calls=_calls_out(calls) or None,
            reasoning_content=reasoning,
        )
        choices.append(
            ChatChoice(
                index=i,
                message=message,
                logprobs=chat_logprobs(r.logprobs) if body.logprobs else None,
                finish_reason=finish_reason(r.finish_reason, calls, reader is not None and reader.closed),
            )
        )
    return ChatCompletion(
        id=completion_id, created=created, model=name, choices=choices, usage=generation.usage()
    )


def _calls_out(calls: list[ToolCall]) -> list[ToolCallOut]:
    return [ToolCallOut(id=c.id, function=FunctionCallOut(name=c.name, arguments=c.arguments)) for c in calls]


def _deltas(events: list[OutputEvent]) -> list[ChatDelta]:
    """OpenAI's deltas for a reader's events: a call's id, type and name first, then its arguments."""
    deltas: list[ChatDelta] = []
    for event in events:
        if isinstance(event, ReasoningText):
            deltas.append(ChatDelta(reasoning_content=event.text))
        elif isinstance(event, ContentDelta):
            deltas.append(ChatDelta(content=event.text))
        elif isinstance(event, ToolCallBegin):
            function = FunctionCallDelta(name=event.name, arguments="")
            call = ToolCallDelta(index=event.index, id=event.id, type="function", function=function)
            deltas.append(ChatDelta(tool_calls=[call]))
        elif isinstance(event, ToolCallArguments):
            function = FunctionCallDelta(arguments=event.fragment)
            deltas.append(ChatDelta(tool_calls=[ToolCallDelta(index=event.index, function=function)]))
    return deltas


async def _stream(
    generation: Generation,
    body: ChatCompletionRequest,
    plan: ToolPlan | None,
    model_name: str,
    completion_id: str,
    created: int,
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
        readers: list[ToolCallReader | None] = [plan.new_reader() if plan else None for _ in range(n)]
        for i in range(n):
            yield chunk([ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))])
        finished: set[int] = set()
        try:
            async for index, piece in generation.chunks():
                if index in finished:
                    continue  # past the one call parallel_tool_calls false allows: not read
                logprobs = chat_logprobs(piece.logprobs) if body.logprobs and piece.logprobs else None
                reader = readers[index]
                if reader is None:
                    deltas = [ChatDelta(content=piece.text)] if piece.text or logprobs else []
                else:
                    deltas = _deltas(reader.feed(piece.text))
                    if piece.finish_reason is not None:
                        deltas += _deltas(reader.finish())
                    if logprobs and not deltas:
                        deltas = [ChatDelta()]
                for delta in deltas:
                    yield chunk([ChatChunkChoice(index=index, delta=delta, logprobs=logprobs)])
                    logprobs = None  # a piece's logprobs go with its first delta
                closed = reader is not None and reader.closed
                if piece.finish_reason is not None or closed:
                    calls = reader.calls if reader is not None else []
                    value = piece.finish_reason.value if piece.finish_reason is not None else None
                    reason = finish_reason(value, calls, closed)
                    yield chunk([ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=reason)])
                    finished.add(index)
                    if len(finished) == n:
                        break  # leaving the generation aborts what is left of it
        except Exception as exc:
            yield stream_error(exc)
            return
    if include_usage:
        yield chunk([], generation.usage())
    yield SSE_DONE
