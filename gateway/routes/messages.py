"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API on the same conversation,
generation and limits as chat completions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.requests import Request

from backends.base import GenerationChunk, StructuredOutput
from backends.conversation import ToolCall
from backends.sampling_options import SamplingOptions
from backends.tool_forced import forced_call_output
from backends.tools.events import ContentDelta
from gateway.anthropic_conversation import MappedRequest, anthropic_conversation, anthropic_prompt
from gateway.anthropic_errors import anthropic_error_event
from gateway.anthropic_output import BlockWriter, content_blocks, frame, message_usage, stop_reason
from gateway.anthropic_protocol import (
    ContentOut,
    CountTokensRequest,
    Message,
    MessageDelta,
    MessagesRequest,
    MessageStart,
    MessageStop,
    MessageUsage,
    Ping,
    StopDelta,
    TokenCount,
)
from gateway.anthropic_remote import remote_message
from gateway.deps import CallContext, CallDep
from gateway.dispatch import dispatch
from gateway.errors import APIError, as_api_error, bad_request
from gateway.generation import OPENAI_DEFAULTS, PreparedGeneration, prepare_tokens
from gateway.registry import ManagedModel, ServedModel
from gateway.routing import RemoteModel
from gateway.streaming import SSE_HEADERS, Generation, open_generation, run_until_disconnect
from gateway.structured_output import checked_structured
from gateway.tool_calls import OutputEvent, ToolCallReader, ToolPlan, tool_plan

router = APIRouter(prefix="/v1", tags=["messages"])


@router.post("/messages", response_model=None)
async def create_message(body: MessagesRequest, call: CallDep) -> Message | StreamingResponse:
    async def on_upstream(remote: RemoteModel, requested: str) -> Message | StreamingResponse:
        return await remote_message(call, remote, body, requested)

    return await dispatch(call, body.model, lambda model: _serve(call, body, model), on_upstream)


@router.post("/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, call: CallDep) -> TokenCount:
    """The input_tokens a /v1/messages request with this prompt reports: its rendered prompt's tokens."""

    async def serve(model: ManagedModel) -> TokenCount:
        mapped = await asyncio.to_thread(anthropic_conversation, body)
        lease = await call.models.acquire(model)
        try:
            prompt = await asyncio.to_thread(anthropic_prompt, lease.served, mapped)
        finally:
            lease.release()
        return TokenCount(input_tokens=len(prompt.token_ids))

    async def on_upstream(remote: RemoteModel, requested: str) -> TokenCount:
        message = (f"count_tokens needs a model tandem serves itself: '{requested}' is served by a remote "
                   "upstream, whose tokenizer tandem does not have.")  # fmt: skip
        raise bad_request(message, param="model")

    return await dispatch(call, body.model, serve, on_upstream)


def _prepared(body: MessagesRequest) -> tuple[MappedRequest, StructuredOutput | None]:
    mapped = anthropic_conversation(body)
    forced = forced_call_output(mapped.conversation)
    return mapped, None if forced is None else checked_structured(forced, "tool_choice")


def _prepare(
    body: MessagesRequest,
    model: ServedModel,
    mapped: MappedRequest,
    request_id: str,
    structured: StructuredOutput | None,
) -> PreparedGeneration:
    prompt = anthropic_prompt(model, mapped)
    ids = prompt.token_ids
    # Anthropic's clients ask for far more than a local context holds (Claude Code: 32000): the answer
    # stops where the context ends, with stop_reason model_context_window_exceeded, as Anthropic's does
    room = model.backend.context_length - len(ids)
    max_tokens = min(body.max_tokens, room) if room > 0 else body.max_tokens
    # stop_sequences join the model's own stop strings (a Modelfile's PARAMETER stop) rather than replace
    # them; the backend says which one ended the text, and only the client's are named back
    stops = (
        (*(model.spec.parameters.stop or ()), *(body.stop_sequences or ())) if body.stop_sequences else None
    )
    options = SamplingOptions(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, stop=stops)
    # Anthropic's defaults (temperature 1, no top_p or top_k) are OpenAI's
    return prepare_tokens(
        options, model, ids, max_tokens, None, request_id, OPENAI_DEFAULTS, structured, prompt
    )


class _Output:
    """One generation's chunks read into events: reasoning, text and tool calls, and why it stopped."""

    def __init__(self, plan: ToolPlan | None, stops: list[str]) -> None:
        self._reader: ToolCallReader | None = plan.new_reader() if plan is not None else None
        self._stops = stops
        self.finish: str | None = None
        self.matched: str | None = None  # the client's stop sequence that ended it
        self._content = ""

    def feed(self, piece: GenerationChunk) -> list[OutputEvent]:
        text = piece.text
        if piece.finish_reason is not None:
            self.finish = piece.finish_reason.value
            if piece.stop_sequence in self._stops:
                self.matched = piece.stop_sequence
        if self.finish == "abort":
            raise APIError(503, "The generation was aborted: the server is shutting down.",
                           type="server_error", code="aborted")  # fmt: skip
        if self._reader is None:
            self._content += text
            return [ContentDelta(text)] if text else []
        events = self._reader.feed(text)
        if self.finish is not None:
            events += self._reader.finish()
        return events

    @property
    def calls(self) -> list[ToolCall]:
        return self._reader.calls if self._reader is not None else []

    def blocks(self) -> list[ContentOut]:
        if self._reader is None:
            return content_blocks("", self._content, [])
        return content_blocks(self._reader.reasoning, self._reader.content, self.calls)

    def stop_reason(self, generation: Generation, body: MessagesRequest) -> StopDelta:
        reason = stop_reason(
            self.finish, self.calls, self.matched, generation.completion_tokens, body.max_tokens
        )
        return StopDelta(stop_reason=reason, stop_sequence=self.matched)


def _usage(generation: Generation) -> MessageUsage:
    return message_usage(generation.usage())


async def _serve(
    call: CallContext, body: MessagesRequest, model: ManagedModel
) -> Message | StreamingResponse:
    request, request_id = call.request, call.request_id
    name = request.state.tandem_model
    mapped, structured = await asyncio.to_thread(_prepared, body)
    generation = await open_generation(
        call, model, lambda m: _prepare(body, m, mapped, request_id, structured)
    )
    plan = tool_plan(mapped.conversation, generation.prompt, model.spec.tool_parser)
    output = _Output(plan, body.stop_sequences or [])
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    if body.stream:
        events = _stream(generation, body, output, name, message_id)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    async with generation:
        await _consume(request, generation, output)
    stop = output.stop_reason(generation, body)
    return Message(id=message_id, content=output.blocks(), model=name, stop_reason=stop.stop_reason,
                   stop_sequence=stop.stop_sequence, usage=_usage(generation))  # fmt: skip


async def _consume(request: Request, generation: Generation, output: _Output) -> None:
    async def consume() -> None:
        async for _, piece in generation.chunks():
            output.feed(piece)

    await run_until_disconnect(request, consume())


async def _stream(
    generation: Generation, body: MessagesRequest, output: _Output, model_name: str, message_id: str
) -> AsyncIterator[str]:
    def opening() -> str:
        """message_start, sent with the first token: its usage then knows what the prefix cache held."""
        start = Message(id=message_id, content=[], model=model_name, usage=_usage(generation))
        return frame(MessageStart(message=start)) + frame(Ping())

    async with generation:
        writer, opened = BlockWriter(), False
        try:
            async for _, piece in generation.chunks():
                if not opened:
                    yield opening()
                    opened = True
                for event in writer.feed(output.feed(piece)):
                    yield frame(event)
        except Exception as exc:  # too late for a status code: Anthropic's error event
            error = as_api_error(exc)
            yield ("" if opened else opening()) + anthropic_error_event(error.status, error.body.message)
            return
        if not opened:
            yield opening()
        for event in writer.close():
            yield frame(event)
    yield frame(MessageDelta(delta=output.stop_reason(generation, body), usage=_usage(generation)))
    yield frame(MessageStop())
