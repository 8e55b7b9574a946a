"""The protocol-neutral conversation: what every protocol (OpenAI chat and responses, Ollama, Anthropic)
maps its request into, and what a backend renders into a prompt.

Nothing here knows a protocol's field names; the adapters in gateway/ translate both ways.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    SYSTEM = "system"
    DEVELOPER = "developer"  # OpenAI's newer name for system instructions; templates see "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image by URL (http(s) or a data: URL); only remote upstreams and vision models take one."""

    url: str
    detail: str | None = None


ContentPart = TextPart | ImagePart


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it (OpenAI's wire form)

    def arguments_object(self) -> object:
        """The arguments as templates expect them (a dict); text that is not JSON stays text."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: tuple[ContentPart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()  # assistant messages
    tool_call_id: str | None = None  # tool messages: the call they answer
    name: str | None = None  # tool messages: the function's name (Ollama's tool_name)
    reasoning: str | None = None  # assistant messages of thinking models

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(part for part in self.content if isinstance(part, ImagePart))

    @classmethod
    def of_text(cls, role: Role, text: str) -> Message:
        return cls(role, (TextPart(text),) if text else ())


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """A function the model may call; `parameters` is a JSON Schema kept as JSON text (hashable)."""

    name: str
    description: str | None = None
    parameters: str = '{"type": "object", "properties": {}}'
    strict: bool = False

    def schema(self) -> dict[str, object]:
        loaded = json.loads(self.parameters)
        return loaded if isinstance(loaded, dict) else {}


class ToolChoiceKind(StrEnum):
    NONE = "none"
    AUTO = "auto"
    REQUIRED = "required"
    NAMED = "named"  # exactly the function `ToolChoice.name`


@dataclass(frozen=True, slots=True)
class ToolChoice:
    kind: ToolChoiceKind = ToolChoiceKind.AUTO
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.kind is ToolChoiceKind.NAMED) != (self.name is not None):
            raise ValueError("a function name goes with tool choice 'named', and only with it")


@dataclass(frozen=True, slots=True)
class Conversation:
    messages: tuple[Message, ...]
    tools: tuple[ToolDefinition, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    thinking: bool | None = None  # None: the template's default; True/False: its switch (enable_thinking)
    # a level ("low", "medium", "high") for templates that read one (gpt-oss's `reasoning_effort`)
    reasoning_effort: str | None = None

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(image for message in self.messages for image in message.images)

    def tool(self, name: str) -> ToolDefinition | None:
        return next((tool for tool in self.tools if tool.name == name), None)
