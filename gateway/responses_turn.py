"""One response from start to end, whichever model served it: the draft it starts as, its output pieces
built into items (whole, or streamed as events), its final status and usage, and storing it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.errors import APIError, as_api_error
from gateway.openai_protocol import Usage
from gateway.response_store import ResponseStore, StoredResponse
from gateway.responses_events import ErrorEvent, EventSequence, ResponseLifecycle
from gateway.responses_objects import (
    IncompleteDetails,
    InputTokensDetails,
    OutputTokensDetails,
    ResponseError,
    ResponseObject,
    ResponseUsage,
)
from gateway.responses_output import OutputBuilder, Piece, item_id
from gateway.responses_protocol import FunctionTool, InputItem, ItemStatus, ResponseRequest

_LAST_EVENT = {"completed": "response.completed", "incomplete": "response.incomplete"}


def draft_of(body: ResponseRequest, model: str) -> ResponseObject:
    """The response as it starts: in progress, no output yet; it echoes the request's settings."""
    tool_choice = body.tool_choice
    assert isinstance(tool_choice, str) or tool_choice.type == "function"  # others were refused
    return ResponseObject(
        id=f"resp_{item_id('r')[2:]}", created_at=int(time.time()), status="in_progress", model=model,
        instructions=body.instructions, max_output_tokens=body.max_output_tokens,
        parallel_tool_calls=body.parallel_tool_calls, previous_response_id=body.previous_response_id,
        reasoning=body.reasoning, store=body.store, temperature=body.temperature, text=body.text,
        tool_choice=tool_choice, tools=[t for t in body.tools if isinstance(t, FunctionTool)],
        top_p=body.top_p, user=body.user, metadata=body.metadata or {},
    )  # fmt: skip


def _item_status(finish_reason: str | None) -> ItemStatus:
    return "incomplete" if finish_reason in ("length", "abort") else "completed"


@dataclass(frozen=True, slots=True)
class Turn:
    """What a response needs besides its output: where it is kept, and the items it answers."""

    draft: ResponseObject
    store: ResponseStore
    namespace: str
    items: list[InputItem]  # this request's input, with ids
    history: list[InputItem]  # what previous_response_id brought in

    def finished(
        self,
        builder: OutputBuilder,
        finish_reason: str | None,
        usage: Usage | None,
        reasoning_tokens: int = 0,
    ) -> ResponseObject:
        final = self.draft.model_copy(deep=True)
        final.output = builder.items
        usage = usage or Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        final.usage = ResponseUsage(
            input_tokens=usage.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=usage.cached_tokens),
            output_tokens=usage.completion_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning_tokens),
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
        )
        if finish_reason == "length":
            final.status, final.incomplete_details = (
                "incomplete",
                IncompleteDetails(reason="max_output_tokens"),
            )
        elif finish_reason == "abort":  # the server is shutting down
            final.status = "failed"
            final.error = ResponseError(
                code="server_error", message="The generation was aborted by the server."
            )
        else:
            final.status = "completed"
        return final

    async def keep(self, final: ResponseObject) -> None:
        if final.store and final.status != "failed":
            record = StoredResponse(namespace=self.namespace, response=final, input_items=self.items,
                                    history=self.history)  # fmt: skip
            await self.store.put(record)

    async def whole(self, piece: Piece) -> ResponseObject:
        builder = OutputBuilder()
        builder.feed(piece.events)
        builder.finish(_item_status(piece.finish_reason))
        final = self.finished(builder, piece.finish_reason, piece.usage, piece.reasoning_tokens)
        await self.keep(final)
        return final

    async def stream(self, pieces: AsyncIterator[Piece]) -> AsyncIterator[str]:
        """The events in OpenAI's order, numbered; the response is stored before response.completed, so a
        client may continue it as soon as it has seen it end."""
        sequence, builder = EventSequence(), OutputBuilder()
        finish_reason: str | None = None
        usage: Usage | None = None
        reasoning_tokens = 0
        yield sequence.frame(ResponseLifecycle(type="response.created", response=self.draft))
        yield sequence.frame(ResponseLifecycle(type="response.in_progress", response=self.draft))
        try:
            # closing this stream (the client went away) closes the generation's at once
            async with contextlib.aclosing(pieces):  # type: ignore[type-var]
                async for piece in pieces:
                    out = builder.feed(piece.events)
                    if out:
                        yield sequence.frames(out)
                    finish_reason = piece.finish_reason or finish_reason
                    usage = piece.usage or usage
                    reasoning_tokens = piece.reasoning_tokens or reasoning_tokens
        except Exception as exc:  # too late for a status code: the error goes in the stream
            error = as_api_error(exc).body
            code = error.code or error.type
            yield sequence.frame(ErrorEvent(code=code, message=error.message, param=error.param))
            failed = self.draft.model_copy(update={"status": "failed"})
            failed.error = ResponseError(code=code, message=error.message)
            yield sequence.frame(ResponseLifecycle(type="response.failed", response=failed))
            return
        yield sequence.frames(builder.finish(_item_status(finish_reason)))
        final = self.finished(builder, finish_reason, usage, reasoning_tokens)
        try:
            await self.keep(final)
        except APIError as exc:  # the response is whole; only storing it failed
            yield sequence.frame(ErrorEvent(code=exc.body.code, message=exc.body.message))
        kind = _LAST_EVENT.get(final.status, "response.failed")
        yield sequence.frame(ResponseLifecycle(type=kind, response=final))
