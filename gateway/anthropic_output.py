"""A generation's output as Anthropic's content blocks and stop reason, whole or as the streamed events.

stop_sequences are the backend's stop strings, joined to the model's own (a Modelfile's PARAMETER stop); the
backend reports which one ended the text (GenerationChunk.stop_sequence), and only the client's are named.
"""

from __future__ import annotations

from backends.conversation import ToolCall
from backends.tools.events import ContentDelta, ToolCallArguments, ToolCallBegin
from gateway.anthropic_protocol import (
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    ContentOut,
    InputJSONDelta,
    MessageUsage,
    StopReason,
    StreamEvent,
    TextDelta,
    TextOut,
    ThinkingDelta,
    ThinkingOut,
    ToolUseOut,
)
from gateway.openai_protocol import Usage
from gateway.tool_calls import OutputEvent, ReasoningText


def message_usage(usage: Usage | None) -> MessageUsage:
    """OpenAI's usage (a local generation's or an upstream's) as Anthropic counts it: the prefix cache's
    hits are cache reads, left out of input_tokens; the cache fills itself, so nothing is a cache write."""
    prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (0, 0)
    cached = usage.cached_tokens if usage is not None else 0
    return MessageUsage(input_tokens=prompt - cached, output_tokens=completion,
                        cache_read_input_tokens=cached, cache_creation_input_tokens=0)  # fmt: skip


def stop_reason(
    finish: str | None, calls: list[ToolCall], matched: str | None, output_tokens: int, max_tokens: int
) -> StopReason:
    if matched is not None:
        return "stop_sequence"
    if finish == "length":
        # max_tokens is bounded by the room the prompt leaves: ending short of it is the context's end
        return "max_tokens" if output_tokens >= max_tokens else "model_context_window_exceeded"
    return "tool_use" if calls else "end_turn"


def tool_input(call: ToolCall) -> object:
    return call.arguments_object()


def content_blocks(reasoning: str, content: str, calls: list[ToolCall]) -> list[ContentOut]:
    blocks: list[ContentOut] = []
    if reasoning:
        blocks.append(ThinkingOut(thinking=reasoning))
    if content:
        blocks.append(TextOut(text=content))
    blocks.extend(ToolUseOut(id=c.id, name=c.name, input=tool_input(c)) for c in calls)
    return blocks


class BlockWriter:
    """The reader's events as content_block_start / _delta / _stop events: a block opens when the kind of
    output changes (thinking, text, a new call) and closes when the next one opens or the output ends."""

    def __init__(self) -> None:
        self._index = -1
        self._open: str | None = None  # "thinking", "text" or "tool_use"

    def _start(self, block: ContentOut) -> list[StreamEvent]:
        events = self.close()
        self._index += 1
        self._open = block.type
        return [*events, ContentBlockStart(index=self._index, content_block=block)]

    def _delta(self, delta: TextDelta | ThinkingDelta | InputJSONDelta) -> ContentBlockDelta:
        return ContentBlockDelta(index=self._index, delta=delta)

    def feed(self, events: list[OutputEvent]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for event in events:
            if isinstance(event, ReasoningText):
                if self._open != "thinking":
                    out += self._start(ThinkingOut(thinking=""))
                out.append(self._delta(ThinkingDelta(thinking=event.text)))
            elif isinstance(event, ContentDelta):
                if not event.text:
                    continue
                if self._open != "text":
                    out += self._start(TextOut(text=""))
                out.append(self._delta(TextDelta(text=event.text)))
            elif isinstance(event, ToolCallBegin):
                out += self._start(ToolUseOut(id=event.id or "", name=event.name, input={}))
            elif isinstance(event, ToolCallArguments) and event.fragment:
                out.append(self._delta(InputJSONDelta(partial_json=event.fragment)))
        return out

    def close(self) -> list[StreamEvent]:
        if self._open is None:
            return []
        self._open = None
        return [ContentBlockStop(index=self._index)]


def frame(event: StreamEvent) -> str:
    """One server-sent event as Anthropic frames it: the event's type as its name."""
    return f"event: {event.type}\ndata: {event.model_dump_json()}\n\n"
