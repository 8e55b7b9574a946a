"""POST /v1/responses (OpenAI's Responses API), and the stored responses: GET and DELETE /v1/responses/{id},
GET /v1/responses/{id}/input_items.

A request maps into the same Conversation as chat completions (gateway.responses_conversation) and goes
through the same dispatch, limits, usage and metrics; its output is read by the same tool-call reader and
written out as Responses items (gateway.responses_output).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from backends.base import GenerationChunk, StructuredOutput
from backends.conversation import Conversation
from backends.sampling_options import SamplingOptions
from backends.tools.events import ContentDelta
from gateway.deps import CallContext, CallDep, PrincipalDep
from gateway.dispatch import dispatch
from gateway.errors import APIError, bad_request
from gateway.generation import OPENAI_DEFAULTS, PreparedGeneration, chat_prompt, prepare_tokens
from gateway.reasoning_tokens import ReasoningTokens
from gateway.registry import ManagedModel, ServedModel
from gateway.response_store import ResponseStore, get_response_store, namespace
from gateway.responses_conversation import input_items, response_conversation, response_structured
from gateway.responses_objects import DeletedResponse, InputItemList, ResponseObject
from gateway.responses_output import Piece, item_id
from gateway.responses_protocol import UNSUPPORTED_RESPONSE_FIELDS, InputItem, ResponseRequest
from gateway.responses_turn import Turn, draft_of
from gateway.responses_upstream import remote_pieces, remote_whole, upstream_payload
from gateway.routing import RemoteModel
from gateway.streaming import SSE_HEADERS, Generation, open_generation, run_until_disconnect
from gateway.tool_calls import OutputEvent, ToolPlan, tool_plan

router = APIRouter(prefix="/v1", tags=["responses"])
ResponseStoreDep = Annotated[ResponseStore, Depends(get_response_store)]
# chat's parameter names in errors raised by the shared preparation, as this API names them
_PARAMS = {"messages": "input", "response_format": "text.format", "max_tokens": "max_output_tokens"}


def not_found(response_id: str, param: str | None = None) -> APIError:
    what = "Previous response" if param else "Response"
    code = "previous_response_not_found" if param else "not_found"
    return APIError(404, f"{what} with id '{response_id}' not found.", param=param, code=code)


def _check_supported(body: ResponseRequest) -> None:
    for name in UNSUPPORTED_RESPONSE_FIELDS:
        if getattr(body, name) not in (None, False):
            raise bad_request(
                f"'{name}' is not supported by tandem yet.", param=name, code="unsupported_parameter"
            )
    # Stateless clients (Codex) ask for encrypted reasoning to send it back; tandem's reasoning items carry
    # the reasoning itself as `content`, which goes back the same way. Anything else would be ignored.
    for value in body.include or ():
        if value != "reasoning.encrypted_content":
            raise bad_request(f"'include' value '{value}' is not supported: tandem's output items carry "
                              "all they have (reasoning as plain text).", param="include",
                              code="unsupported_parameter")  # fmt: skip


@router.post("/responses", response_model=None)
async def create_response(
    body: ResponseRequest, call: CallDep, store: ResponseStoreDep
) -> ResponseObject | StreamingResponse:
    _check_supported(body)
    owner = namespace(call.principal)
    history: list[InputItem] = []
    if body.previous_response_id is not None:
        previous = await store.get(owner, body.previous_response_id)
        if previous is None:
            raise not_found(body.previous_response_id, "previous_response_id")
        history = previous.conversation()
    items = _with_ids(input_items(body))
    conversation, structured = await asyncio.to_thread(_prepared, body, history, items)

    def turn() -> Turn:  # once dispatch has named the model
        return Turn(draft_of(body, call.request.state.tandem_model), store, owner, items, history)

    async def serve(model: ManagedModel) -> ResponseObject | StreamingResponse:
        return await _serve_local(call, body, conversation, structured, turn(), model)

    async def on_upstream(remote: RemoteModel, requested: str) -> ResponseObject | StreamingResponse:
        return await _serve_remote(call, body, conversation, turn(), remote, requested)

    return await dispatch(call, body.model, serve, on_upstream)


def _with_ids(items: list[InputItem]) -> list[InputItem]:
    prefixes = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
    return [
        item if item.id else item.model_copy(update={"id": item_id(prefixes[item.type])}) for item in items
    ]


def _prepared(
    body: ResponseRequest, history: list[InputItem], items: list[InputItem]
) -> tuple[Conversation, StructuredOutput | None]:
    conversation = response_conversation(body, history, items)
    return conversation, response_structured(body, conversation)


def _prepare(
    body: ResponseRequest,
    served: ServedModel,
    conversation: Conversation,
    request_id: str,
    structured: StructuredOutput | None,
) -> PreparedGeneration:
    try:
        prompt = chat_prompt(served, conversation)
        options = SamplingOptions(temperature=body.temperature, top_p=body.top_p)
        return prepare_tokens(options, served, prompt.token_ids, body.max_output_tokens, None, request_id,
                              OPENAI_DEFAULTS, structured, prompt)  # fmt: skip
    except APIError as exc:
        exc.body.param = _PARAMS.get(exc.body.param or "", exc.body.param)
        raise


class _OutputReader:
    """Reads the output as it arrives (calls, reasoning; without a plan, plain text as content) and counts
    its reasoning tokens."""

    def __init__(self, plan: ToolPlan | None) -> None:
        self._reader = plan.new_reader() if plan is not None else None
        self.reasoning_tokens = ReasoningTokens()

    def read(self, chunk: GenerationChunk) -> list[OutputEvent]:
        last = chunk.finish_reason is not None
        if self._reader is None:
            events: list[OutputEvent] = [ContentDelta(chunk.text)] if chunk.text else []
        else:
            events = self._reader.feed(chunk.text) + (self._reader.finish() if last else [])
        self.reasoning_tokens.add(events, len(chunk.token_ids))
        return events


async def _serve_local(
    call: CallContext,
    body: ResponseRequest,
    conversation: Conversation,
    structured: StructuredOutput | None,
    turn: Turn,
    model: ManagedModel,
) -> ResponseObject | StreamingResponse:
    request_id = call.request_id
    generation = await open_generation(
        call, model, lambda served: _prepare(body, served, conversation, request_id, structured)
    )
    reader = _OutputReader(tool_plan(conversation, generation.prompt, model.spec.tool_parser))
    if body.stream:
        return _streaming(turn.stream(_local_pieces(generation, reader)))
    pieces: list[Piece] = []

    async def consume() -> None:  # the stream's pieces, kept; a disconnect closes them (and the generation)
        async with contextlib.aclosing(_local_pieces(generation, reader)) as stream:
            async for piece in stream:
                pieces.append(piece)

    await run_until_disconnect(call.request, consume())
    return await turn.whole(Piece.joined(pieces))


async def _local_pieces(generation: Generation, reader: _OutputReader) -> AsyncGenerator[Piece, None]:
    async with generation:
        async for _, chunk in generation.chunks():
            reason = chunk.finish_reason.value if chunk.finish_reason is not None else None
            yield Piece(reader.read(chunk), reason)
    # complete once the generation has ended
    yield Piece([], usage=generation.usage(), reasoning_tokens=reader.reasoning_tokens.count)


async def _serve_remote(
    call: CallContext,
    body: ResponseRequest,
    conversation: Conversation,
    turn: Turn,
    remote: RemoteModel,
    requested: str,
) -> ResponseObject | StreamingResponse:
    payload = upstream_payload(body, conversation)
    if body.stream:
        return _streaming(turn.stream(await remote_pieces(call, remote, payload, requested)))
    return await turn.whole(await remote_whole(call, remote, payload, requested))


def _streaming(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/responses/{response_id}")
async def get_response(response_id: str, principal: PrincipalDep, store: ResponseStoreDep) -> ResponseObject:
    record = await store.get(namespace(principal), response_id)
    if record is None:
        raise not_found(response_id)
    return record.response


@router.delete("/responses/{response_id}")
async def delete_response(
    response_id: str, principal: PrincipalDep, store: ResponseStoreDep
) -> DeletedResponse:
    if not await store.delete(namespace(principal), response_id):
        raise not_found(response_id)
    return DeletedResponse(id=response_id)


@router.get("/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    principal: PrincipalDep,
    store: ResponseStoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> InputItemList:
    """The request's own input items (not those previous_response_id brought in), newest first by default."""
    record = await store.get(namespace(principal), response_id)
    if record is None:
        raise not_found(response_id)
    items = record.input_items if order == "asc" else record.input_items[::-1]
    if after is not None:
        ids = [item.id for item in items]
        if after not in ids:
            raise bad_request(f"No input item with id '{after}' in response '{response_id}'.", param="after")
        items = items[ids.index(after) + 1 :]
    page = [item.model_dump(exclude_none=True, by_alias=True) for item in items[:limit]]
    return InputItemList(data=page, first_id=page[0]["id"] if page else None,
                         last_id=page[-1]["id"] if page else None, has_more=len(items) > limit)  # fmt: skip
