"""A chat's output as reasoning, content and tool calls, for both protocols: which parsers read it, and the
calls' ids.

The reasoning (a thinking template's `<think>` part) is split off first (backends.tools.reasoning); the rest
goes through the tool-call parser.

The parser: a forced call's (backends.tool_forced) under tool_choice required or named; otherwise the
model's `tool_parser:` setting, else the format its chat template teaches (backends.tools.detect), else
Hermes' `<tool_call>` format, the one tandem describes the tools in to a model whose template has none.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from backends.base import Prompt
from backends.conversation import Conversation, ToolCall, ToolChoiceKind
from backends.tool_forced import ForcedCallParser
from backends.tools.detect import parser_class
from backends.tools.events import ContentDelta, ParserEvent, ToolCallBegin
from backends.tools.parser import ToolCallParser
from backends.tools.reasoning import ReasoningDelta, ReasoningParser

FALLBACK_PARSER = "hermes"


@dataclass(frozen=True, slots=True)
class ReasoningText:
    text: str


OutputEvent = ParserEvent | ReasoningText


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How one request's output is read; every choice gets a reader of its own."""

    parser: str | None  # a name in backends.tools PARSERS, "forced", or None: no tools to read
    reasoning: bool = False  # split off a <think> part
    reasoning_open: bool = False  # the output starts inside it

    def new_reader(self) -> ToolCallReader:
        parser: ToolCallParser | None = None
        if self.parser == ForcedCallParser.name:
            parser = ForcedCallParser()
        elif self.parser is not None:
            parser = parser_class(self.parser)()
        reasoning = ReasoningParser(starts_inside=self.reasoning_open) if self.reasoning else None
        return ToolCallReader(parser, reasoning)


def tool_plan(conversation: Conversation, prompt: Prompt | None, override: str | None) -> ToolPlan | None:
    """None: the output is all content (no tools or tool_choice none, and no reasoning to split off)."""
    kind = conversation.tool_choice.kind
    if kind in (ToolChoiceKind.REQUIRED, ToolChoiceKind.NAMED):
        return ToolPlan(ForcedCallParser.name)  # the grammar starts at the first token: no reasoning
    parser = None
    if conversation.tools and kind is not ToolChoiceKind.NONE:
        detected = prompt.tool_format if prompt is not None else None
        parser = override or detected or FALLBACK_PARSER
    reasoning = prompt is not None and prompt.reasoning
    if parser is None and not reasoning:
        return None
    return ToolPlan(parser, reasoning, reasoning and prompt is not None and prompt.reasoning_open)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallReader:
    """One choice's output, fed as it streams: its reasoning, then the parser's events, with every call
    given its id."""

    def __init__(self, parser: ToolCallParser | None, reasoning: ReasoningParser | None = None) -> None:
        self._parser = parser
        self._reasoning_parser = reasoning
        self._ids: list[str] = []
        self.content = ""
        self.reasoning = ""

    def _split(self, delta: ReasoningDelta, final: bool) -> list[OutputEvent]:
        events: list[OutputEvent] = []
        if delta.reasoning:
            self.reasoning += delta.reasoning
            events.append(ReasoningText(delta.reasoning))
        if self._parser is None:
            if delta.content:
                self.content += delta.content
                events.append(ContentDelta(delta.content))
            return events
        events += self._named(self._parser.feed(delta.content) if delta.content else [])
        if final:
            events += self._named(self._parser.finish())
        return events

    def _named(self, events: list[ParserEvent]) -> list[OutputEvent]:
        named: list[OutputEvent] = []
        for event in events:
            if isinstance(event, ToolCallBegin):
                self._ids.append(event.id or new_call_id())  # Mistral's own ids round-trip through templates
                event = ToolCallBegin(event.index, event.name, self._ids[event.index])
            elif isinstance(event, ContentDelta):
                self.content += event.text
            named.append(event)
        return named

    def feed(self, text: str) -> list[OutputEvent]:
        if not text:
            return []
        if self._reasoning_parser is None:
            return self._split(ReasoningDelta(content=text), final=False)
        return self._split(self._reasoning_parser.feed(text), final=False)

    def finish(self) -> list[OutputEvent]:
        delta = self._reasoning_parser.finish() if self._reasoning_parser is not None else ReasoningDelta()
        return self._split(delta, final=True)

    @property
    def calls(self) -> list[ToolCall]:
        if self._parser is None:
            return []
        return [ToolCall(self._ids[i], c.name, c.arguments) for i, c in enumerate(self._parser.calls)]


def read_all(plan: ToolPlan, text: str) -> ToolCallReader:
    """A whole output, read: its reader holds the content, the reasoning and the calls."""
    reader = plan.new_reader()
    reader.feed(text)
    reader.finish()
    return reader


def finish_reason(reason: str | None, calls: list[ToolCall]) -> str | None:
    """OpenAI's: 'tool_calls' when the output ended on its own with calls in it."""
    return "tool_calls" if calls and reason == "stop" else reason
