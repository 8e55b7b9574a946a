"""A chat's output as reasoning, content and tool calls, for both protocols: which parsers read it, and the
calls' ids.

The reasoning (a thinking template's `<think>` part, or gpt-oss's analysis channel) is split off first
(backends.tools.reasoning, backends.tools.harmony); the rest goes through the tool-call parser.

The parser: a forced call's (backends.tool_forced) under tool_choice required or named; otherwise the
model's `tool_parser:` setting, else the format its chat template teaches (backends.tools.detect), else
Hermes' `<tool_call>` format, the one tandem describes the tools in to a model whose template has none.
Under auto, strict functions get a grammar in that same format (backends.tools.strict), and the parser then
reads only the calls the grammar constrains; parallel_tool_calls false keeps the first call only.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

from backends.base import Prompt
from backends.conversation import Conversation, ToolCall, ToolChoiceKind
from backends.tool_forced import ForcedCallParser
from backends.tools.detect import parser_class
from backends.tools.events import ContentDelta, ParserEvent, ToolCallBegin
from backends.tools.harmony import HarmonyParser, HarmonySplitter
from backends.tools.markers import FALLBACK_FORMAT
from backends.tools.parser import ToolCallParser
from backends.tools.reasoning import ReasoningDelta, ReasoningParser, ReasoningSplitter
from backends.tools.strict import StrictFormatError, auto_call_output, strict_auto
from gateway.errors import bad_request
from gateway.generation import PreparedGeneration
from gateway.registry import ServedModel

FALLBACK_PARSER = FALLBACK_FORMAT  # the format tandem describes tools in to a template without a section


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
    channels: bool = False  # gpt-oss's harmony messages: split by channel (instead of <think>)
    tagged_only: bool = False  # strict under auto: only calls opened by the format's marker are calls
    max_calls: int | None = None  # parallel_tool_calls false: 1

    def new_reader(self) -> ToolCallReader:
        parser: ToolCallParser | None = None
        if self.parser == ForcedCallParser.name:
            parser = ForcedCallParser(self.max_calls)
        elif self.parser is not None:
            parser = parser_class(self.parser)(self.max_calls, leading=not self.tagged_only)
        reasoning: ReasoningSplitter | None = None
        if self.channels:
            reasoning = HarmonySplitter()
        elif self.reasoning:
            reasoning = ReasoningParser(starts_inside=self.reasoning_open)
        return ToolCallReader(parser, reasoning)


def _auto_parser(conversation: Conversation, prompt: Prompt | None, override: str | None) -> str:
    detected = prompt.tool_format if prompt is not None else None
    return override or detected or FALLBACK_PARSER


def tool_plan(
    conversation: Conversation, prompt: Prompt | None, override: str | None, strict_grammar: bool = False
) -> ToolPlan | None:
    """None: the output is all content (no tools or tool_choice none, and no reasoning to split off).

    strict_grammar: the requests carry with_strict_calls' grammar, so only the calls it constrains (opened
    by the format's marker) are read."""
    kind = conversation.tool_choice.kind
    max_calls = None if conversation.parallel_tool_calls else 1
    if kind in (ToolChoiceKind.REQUIRED, ToolChoiceKind.NAMED):
        # the grammar starts at the first token: no reasoning
        return ToolPlan(ForcedCallParser.name, max_calls=max_calls)
    parser = None
    if conversation.tools and kind is not ToolChoiceKind.NONE:
        parser = _auto_parser(conversation, prompt, override)
    channels = (override or (prompt.tool_format if prompt is not None else None)) == HarmonyParser.name
    reasoning = prompt is not None and prompt.reasoning
    if parser is None and not reasoning and not channels:
        return None
    opened = reasoning and prompt is not None and prompt.reasoning_open
    tagged = parser is not None and strict_grammar and strict_auto(conversation)
    return ToolPlan(parser, reasoning, opened, channels, tagged, max_calls if parser is not None else None)


def with_strict_calls(prepared: PreparedGeneration, conversation: Conversation, model: ServedModel
                      ) -> PreparedGeneration:  # fmt: skip
    """The requests with the grammar of strict functions under auto (backends.tools.strict), in the format
    the model's output is read in; unchanged when no function is strict. Run where the prompt was rendered
    (its tool format decides the grammar), before the requests reach the backend."""
    if not strict_auto(conversation) or not prepared.requests:
        return prepared
    sampling = prepared.requests[0].sampling
    markers = prepared.prompt.marker_token_ids if prepared.prompt is not None else {}
    try:
        tool_format = _auto_parser(conversation, prepared.prompt, model.spec.tool_parser)
        # the grammar sees the markers the output is written with (backends.tools.markers) as their text
        output = auto_call_output(conversation, tool_format, markers, sampling.preserved_token_ids)
    except StrictFormatError as exc:
        raise bad_request(str(exc), param=f"tools[{exc.tool_index}].function.strict",
                          code="unsupported_parameter") from None  # fmt: skip
    assert output is not None
    if sampling.structured is not None:
        raise bad_request("'strict' functions under tool_choice 'auto' cannot be combined with "
                          "'response_format'.", param="response_format")  # fmt: skip
    if sampling.min_tokens > 0 or sampling.ignore_eos:  # the grammar decides where the output may end
        param = "min_tokens" if sampling.min_tokens > 0 else "ignore_eos"
        raise bad_request(f"'{param}' cannot be combined with 'strict' functions under tool_choice 'auto'.",
                          param=param)  # fmt: skip
    if not model.backend.capabilities.structured_output:
        raise bad_request(
            f"'strict' functions are not supported by backend '{model.backend.kind}' serving "
            f"'{model.spec.name}'.", param="tools", code="unsupported_parameter",
        )  # fmt: skip
    requests = [
        dataclasses.replace(r, sampling=dataclasses.replace(r.sampling, structured=output))
        for r in prepared.requests
    ]
    return dataclasses.replace(prepared, requests=requests)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallReader:
    """One choice's output, fed as it streams: its reasoning, then the parser's events, with every call
    given its id."""

    def __init__(self, parser: ToolCallParser | None, reasoning: ReasoningSplitter | None = None) -> None:
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
    def closed(self) -> bool:
        """The calls allowed (parallel_tool_calls false: one) are complete; what follows is not read."""
        return self._parser is not None and self._parser.closed

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


def finish_reason(reason: str | None, calls: list[ToolCall], closed: bool = False) -> str | None:
    """OpenAI's: 'tool_calls' when the output ended on its own with calls in it, or went on (to its length)
    after the one call parallel_tool_calls false allows (`closed`)."""
    return "tool_calls" if calls and (reason == "stop" or closed) else reason
