"""A generation's output as Responses output items: reasoning, message and function_call items in the order
the model wrote them, with the stream's events for each step.

The same builder serves both ways out: a stream sends the events as they come; a whole response feeds the
reader's events of the full text and keeps only the items, so the two cannot disagree.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from backends.tools.events import ContentDelta, ToolCallArguments, ToolCallBegin
from gateway.openai_protocol import Usage
from gateway.responses_events import (
    ArgumentsDelta,
    ArgumentsDone,
    ContentPartEvent,
    OutputItemEvent,
    StreamEvent,
    text_delta,
    text_done,
)
from gateway.responses_objects import (
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputReasoning,
    OutputText,
)
from gateway.responses_protocol import ItemStatus, ReasoningContent
from gateway.tool_calls import OutputEvent, ReasoningText


@dataclass(frozen=True, slots=True)
class Piece:
    """A step of one generation's output, local or remote: reader events, and on the last piece why it ended
    and its token counts."""

    events: list[OutputEvent]
    finish_reason: str | None = None
    usage: Usage | None = None
    reasoning_tokens: int = 0  # of usage's completion tokens (gateway.reasoning_tokens), on the last piece

    @staticmethod
    def joined(pieces: list[Piece]) -> Piece:
        """A whole output from its pieces: every event, the last reason, usage and count that came."""
        return Piece(
            [event for piece in pieces for event in piece.events],
            next((p.finish_reason for p in reversed(pieces) if p.finish_reason is not None), None),
            next((p.usage for p in reversed(pieces) if p.usage is not None), None),
            next((p.reasoning_tokens for p in reversed(pieces) if p.reasoning_tokens), 0),
        )


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class OutputBuilder:
    def __init__(self) -> None:
        self.items: list[OutputItem] = []
        self._open: OutputItem | None = None
        self._calls: dict[int, tuple[int, OutputFunctionCall]] = {}  # a reader's call index -> its item

    def feed(self, events: list[OutputEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for event in events:
            if isinstance(event, ReasoningText):
                out += self._reasoning(event.text)
            elif isinstance(event, ContentDelta):
                out += self._text(event.text)
            elif isinstance(event, ToolCallBegin):
                out += self._close("completed")
                call = OutputFunctionCall(id=item_id("fc"), call_id=event.id or "", name=event.name)
                self._calls[event.index] = (len(self.items), call)
                out += self._add(call)
            elif isinstance(event, ToolCallArguments):
                index, call = self._calls[event.index]
                call.arguments += event.fragment
                out.append(ArgumentsDelta(item_id=call.id, output_index=index, delta=event.fragment))
        return out

    def finish(self, status: ItemStatus) -> list[StreamEvent]:
        """Closes the last item with `status` (incomplete when max_output_tokens cut it). An output with no
        item at all is one empty message, as OpenAI answers an empty completion."""
        out: list[StreamEvent] = []
        if not self.items:
            out += self._text("")
        return out + self._close(status)

    def _add(self, item: OutputItem) -> list[StreamEvent]:
        self.items.append(item)
        self._open = item
        return [OutputItemEvent(type="response.output_item.added", output_index=len(self.items) - 1,
                                item=item.model_copy(deep=True))]  # fmt: skip

    def _reasoning(self, text: str) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if not isinstance(self._open, OutputReasoning):
            out += self._close("completed")
            out += self._add(OutputReasoning(id=item_id("rs")))
            assert isinstance(self._open, OutputReasoning)
            self._open.content.append(ReasoningContent(text=""))
            out.append(self._part("added", self._open, ReasoningContent(text="")))
        item = self._open
        item.content[0].text += text
        out.append(text_delta("reasoning_text", item.id, len(self.items) - 1, text))
        return out

    def _text(self, text: str) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if not isinstance(self._open, OutputMessage):
            out += self._close("completed")
            out += self._add(OutputMessage(id=item_id("msg")))
            assert isinstance(self._open, OutputMessage)
            self._open.content.append(OutputText())
            out.append(self._part("added", self._open, OutputText()))
        item = self._open
        item.content[0].text += text
        if text:
            out.append(text_delta("output_text", item.id, len(self.items) - 1, text))
        return out

    def _part(self, step: str, item: OutputItem, part: OutputText | ReasoningContent) -> ContentPartEvent:
        return ContentPartEvent(type=f"response.content_part.{step}", item_id=item.id,
                                output_index=self.items.index(item), content_index=0, part=part)  # fmt: skip

    def _close(self, status: ItemStatus) -> list[StreamEvent]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = self.items.index(item)
        item.status = status
        out: list[StreamEvent] = []
        if isinstance(item, OutputMessage):
            text = item.content[0].text
            out += [text_done("output_text", item.id, index, text),
                    self._part("done", item, item.content[0].model_copy())]  # fmt: skip
        elif isinstance(item, OutputReasoning):
            text = item.content[0].text
            out += [text_done("reasoning_text", item.id, index, text),
                    self._part("done", item, item.content[0].model_copy())]  # fmt: skip
        else:
            out.append(ArgumentsDone(item_id=item.id, output_index=index, name=item.name,
                                     arguments=item.arguments))  # fmt: skip
        out.append(OutputItemEvent(type="response.output_item.done", output_index=index,
                                   item=item.model_copy(deep=True)))  # fmt: skip
        return out
