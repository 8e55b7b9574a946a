"""The Responses API's streaming events, in the order OpenAI sends them, and the SSE framing.

Each event is `event: <type>` plus `data: <json>` with a `sequence_number` counting from 0; there is no
`[DONE]` line: response.completed (or .incomplete, .failed) is the last event.
"""

from __future__ import annotations

from typing import Literal

from gateway.outbound import Outbound
from gateway.responses_objects import OutputItem, OutputText, ResponseObject
from gateway.responses_protocol import ReasoningContent


class StreamEvent(Outbound):
    type: str
    sequence_number: int = 0  # set as it is sent


class ResponseLifecycle(StreamEvent):
    """response.created, .in_progress, .completed, .incomplete, .failed"""

    response: ResponseObject


class OutputItemEvent(StreamEvent):
    """response.output_item.added / .done"""

    output_index: int
    item: OutputItem


class ContentPartEvent(StreamEvent):
    """response.content_part.added / .done"""

    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningContent


class TextDelta(StreamEvent):
    """response.output_text.delta, response.reasoning_text.delta"""

    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[dict[str, object]] | None = None  # output_text only (the SDK's type requires the list)


class TextDone(StreamEvent):
    """response.output_text.done, response.reasoning_text.done"""

    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[dict[str, object]] | None = None


class ArgumentsDelta(StreamEvent):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


class ArgumentsDone(StreamEvent):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(StreamEvent):
    type: Literal["error"] = "error"
    code: str | None = None
    message: str
    param: str | None = None


class EventSequence:
    """Numbers the events of one stream and frames them as SSE."""

    def __init__(self) -> None:
        self._next = 0

    def skip(self, count: int) -> None:
        """Number on after `count` events sent by someone else (the drain ending a stream)."""
        self._next += count

    def frame(self, event: StreamEvent) -> str:
        event.sequence_number = self._next
        self._next += 1
        return f"event: {event.type}\ndata: {event.model_dump_json(exclude_none=True)}\n\n"

    def frames(self, events: list[StreamEvent]) -> str:
        return "".join(self.frame(event) for event in events)


def text_delta(
    kind: Literal["output_text", "reasoning_text"], item_id: str, index: int, delta: str
) -> TextDelta:
    logprobs: list[dict[str, object]] | None = [] if kind == "output_text" else None
    return TextDelta(
        type=f"response.{kind}.delta", item_id=item_id, output_index=index, content_index=0, delta=delta,
        logprobs=logprobs,
    )  # fmt: skip


def text_done(
    kind: Literal["output_text", "reasoning_text"], item_id: str, index: int, text: str
) -> TextDone:
    logprobs: list[dict[str, object]] | None = [] if kind == "output_text" else None
    return TextDone(
        type=f"response.{kind}.done", item_id=item_id, output_index=index, content_index=0, text=text,
        logprobs=logprobs,
    )  # fmt: skip
