"""/v1/messages for a model served by a remote upstream: the same Conversation, sent as an OpenAI chat
request (what every upstream speaks), its answer and stream mapped back to Anthropic's blocks and events.

An OpenAI upstream does not say which stop sequence ended an answer: it stops at them, and the answer's
stop_reason is end_turn. A prefill cannot be continued through chat completions: it is refused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from backends.conversation import ToolCall, ToolChoiceKind
from backends.remote.upstream import UpstreamError
from backends.tools.events import ContentDelta, ToolCallArguments, ToolCallBegin
from gateway.anthropic_conversation import MappedRequest, anthropic_conversation
from gateway.anthropic_errors import anthropic_error_event
from gateway.anthropic_output import BlockWriter, content_blocks, frame, message_usage
from gateway.anthropic_protocol import Message as AnthropicMessage
from gateway.anthropic_protocol import (
    MessageDelta,
    MessagesRequest,
    MessageStart,
    MessageStop,
    MessageUsage,
    Ping,
    StopDelta,
    StopReason,
)
from gateway.deps import CallContext
from gateway.errors import as_api_error, bad_request, upstream_api_error
from gateway.remote_serving import admit_remote, open_stream, release_stream, upstream_usage
from gateway.routing import RemoteModel
from gateway.streaming import SSE_HEADERS
from gateway.tool_calls import OutputEvent, ReasoningText
from gateway.upstream_messages import openai_message

_STOP_REASONS: dict[str, StopReason] = {"length": "max_tokens", "tool_calls": "tool_use"}


def chat_payload(body: MessagesRequest, mapped: MappedRequest) -> dict[str, Any]:
    """The OpenAI chat request that asks the upstream what `body` asks."""
    if mapped.prefill:
        raise bad_request("A final assistant message (a prefill) cannot be continued by a remote upstream.",
                          param=f"messages[{len(body.messages) - 1}]")  # fmt: skip
    conversation = mapped.conversation
    payload: dict[str, Any] = {
        "messages": [openai_message(m) for m in conversation.messages],
        "max_tokens": body.max_tokens,
    }
    optional = {"temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k,
                "stop": body.stop_sequences}  # fmt: skip
    payload.update({name: value for name, value in optional.items() if value is not None})
    if body.metadata is not None and body.metadata.user_id is not None:
        payload["user"] = body.metadata.user_id  # OpenAI's end-user id
    if conversation.thinking:
        payload["reasoning_effort"] = "medium"
    if conversation.tools:
        payload["tools"] = [
            {"type": "function",
             "function": {"name": t.name, "description": t.description or "", "parameters": t.schema()}}
            for t in conversation.tools
        ]  # fmt: skip
        choice = conversation.tool_choice
        kind = choice.kind
        if kind is ToolChoiceKind.NAMED:
            payload["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            payload["tool_choice"] = kind.value
        if not conversation.parallel_tool_calls:
            payload["parallel_tool_calls"] = False
    return payload


def _events(delta: dict[str, Any], seen: set[int]) -> list[OutputEvent]:
    """An OpenAI message or delta as the reader's events; `seen`: the call indexes announced so far."""
    events: list[OutputEvent] = []
    if delta.get("reasoning_content"):
        events.append(ReasoningText(delta["reasoning_content"]))
    if delta.get("content"):
        events.append(ContentDelta(delta["content"]))
    for position, call in enumerate(delta.get("tool_calls") or ()):
        index = int(call.get("index", position))
        function = call.get("function") or {}
        if index not in seen:
            seen.add(index)
            call_id = call.get("id") or f"call_{uuid.uuid4().hex[:24]}"
            events.append(ToolCallBegin(index, function.get("name") or "", call_id))
        if function.get("arguments"):
            events.append(ToolCallArguments(index, function["arguments"]))
    return events


def _usage(data: dict[str, Any]) -> MessageUsage:
    return message_usage(upstream_usage(data))


def _stop(finish: str | None) -> StopDelta:
    return StopDelta(stop_reason=_STOP_REASONS.get(finish or "", "end_turn"))


async def remote_message(
    call: CallContext, remote: RemoteModel, body: MessagesRequest, requested: str
) -> AnthropicMessage | StreamingResponse:
    payload = chat_payload(body, await asyncio.to_thread(anthropic_conversation, body))
    if body.stream:
        return await _streamed(call, remote, payload, requested)
    admission = await admit_remote(call, payload)
    remote.in_flight += 1
    usage = MessageUsage(input_tokens=0, output_tokens=0)
    try:
        data = await remote.upstream().chat(requested, payload)
        usage = _usage(data)
    finally:
        remote.in_flight -= 1
        await admission.settle(usage.prompt_tokens, usage.output_tokens)
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    calls = [
        (c.get("id") or f"call_{uuid.uuid4().hex[:24]}", (c.get("function") or {}))
        for c in message.get("tool_calls") or ()
    ]
    tool_calls = [ToolCall(i, f.get("name") or "", f.get("arguments") or "{}") for i, f in calls]
    blocks = content_blocks(message.get("reasoning_content") or "", message.get("content") or "", tool_calls)
    stop = _stop(choice.get("finish_reason"))
    name = call.request.state.tandem_model
    return AnthropicMessage(id=f"msg_{uuid.uuid4().hex[:24]}", content=blocks, model=name,
                            stop_reason=stop.stop_reason, usage=usage)  # fmt: skip


async def _streamed(
    call: CallContext, remote: RemoteModel, payload: dict[str, Any], requested: str
) -> StreamingResponse:
    admission, chunks = await open_stream(call, remote, payload, requested)
    name = call.request.state.tandem_model

    async def events() -> AsyncIterator[str]:
        usage = MessageUsage(input_tokens=0, output_tokens=0)
        start = AnthropicMessage(id=f"msg_{uuid.uuid4().hex[:24]}", content=[], model=name, usage=usage)
        writer, seen, finish = BlockWriter(), set[int](), None
        try:
            yield frame(MessageStart(message=start))
            yield frame(Ping())
            async for chunk in chunks:
                if chunk.get("usage"):
                    usage = _usage(chunk)
                for choice in chunk.get("choices") or ():
                    for event in writer.feed(_events(choice.get("delta") or {}, seen)):
                        yield frame(event)
                    finish = choice.get("finish_reason") or finish
            for event in writer.close():
                yield frame(event)
            yield frame(MessageDelta(delta=_stop(finish), usage=usage))
            yield frame(MessageStop())
        except Exception as exc:  # too late for a status code: Anthropic's error event
            error = upstream_api_error(exc) if isinstance(exc, UpstreamError) else as_api_error(exc)
            yield anthropic_error_event(error.status, error.body.message)
        finally:
            await release_stream(remote, chunks, admission, usage.prompt_tokens, usage.output_tokens)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
