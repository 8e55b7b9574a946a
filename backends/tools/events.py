"""What a tool-call parser reports as a model's output streams in: content, then calls piece by piece.

The pieces are shaped like OpenAI's streamed tool-call deltas (a call's id and name first, then fragments of
its arguments' JSON text), so a protocol adapter maps them one to one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallBegin:
    index: int  # position of the call in the whole output, from 0
    name: str
    id: str | None = None  # the model's own id where its format has one (Mistral); else the caller makes one


@dataclass(frozen=True, slots=True)
class ToolCallArguments:
    index: int
    fragment: str  # the next piece of the arguments' JSON text; the pieces concatenate to the whole


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    index: int


ParserEvent = ContentDelta | ToolCallBegin | ToolCallArguments | ToolCallEnd


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    """One complete call: `arguments` is JSON text (an object when the model wrote valid JSON)."""

    name: str
    arguments: str
    id: str | None = None
