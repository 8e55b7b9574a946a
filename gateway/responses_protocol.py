"""OpenAI Responses API request and response shapes (field names as in the OpenAI API reference).

Input items may be whatever an earlier response put out (a client sends `response.output` back as input), so
the item types here accept the output items' fields (id, status, annotations) too. The response objects are
in gateway/responses_objects.py, the streaming events in gateway/responses_events.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag

from gateway.openai_protocol import MAX_TOKEN_COUNT

# Fields tandem does not implement: accepted only when null (or their one value tandem does), else a 400
UNSUPPORTED_RESPONSE_FIELDS = ("background", "max_tool_calls", "top_logprobs", "conversation", "prompt")
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class _Request(BaseModel):
    # as on chat completions: an unknown field is a 400, never ignored; NaN and infinities are no value
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _type_of(default: str) -> Callable[[Any], str]:
    def tag(value: Any) -> str:
        kind = value.get("type", default) if isinstance(value, dict) else getattr(value, "type", default)
        # in brackets: errors' locations name fields, and gateway.errors leaves bracketed union tags out
        return f"[{kind if isinstance(kind, str) else default}]"

    return tag


# ---- input items -------------------------------------------------------------------------------------------


class InputText(_Request):
    type: Literal["input_text"]
    text: str


class InputImage(_Request):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] = "auto"


class OutputTextPart(_Request):
    """An assistant message's text, sent back as input."""

    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None


class RefusalPart(_Request):
    type: Literal["refusal"]
    refusal: str


InputPart = Annotated[
    Annotated[InputText, Tag("[input_text]")]
    | Annotated[InputImage, Tag("[input_image]")]
    | Annotated[OutputTextPart, Tag("[output_text]")]
    | Annotated[RefusalPart, Tag("[refusal]")],
    Discriminator(_type_of("")),
]


def _parts_of_text(value: Any) -> Any:
    # a string is one text part; as a list only, errors name the part that is wrong rather than "not a string"
    return [{"type": "input_text", "text": value}] if isinstance(value, str) else value


class MessageItem(_Request):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: Annotated[list[InputPart], BeforeValidator(_parts_of_text)]
    id: str | None = None
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCallItem(_Request):
    type: Literal["function_call"] = "function_call"
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: ItemStatus | None = None
    caller: dict[str, Any] | None = None  # {"type": "direct"}: the model called it
    namespace: None = None  # tools in namespaces are not served


class FunctionCallOutputItem(_Request):
    type: Literal["function_call_output"] = "function_call_output"
    call_id: str = Field(min_length=1)
    output: str | list[InputText | InputImage]
    id: str | None = None
    status: ItemStatus | None = None


class ReasoningSummary(_Request):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningContent(_Request):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(_Request):
    type: Literal["reasoning"] = "reasoning"
    id: str | None = None
    summary: list[ReasoningSummary] = Field(default_factory=list)
    content: list[ReasoningContent] | None = None
    encrypted_content: None = None  # tandem writes none, and cannot read another provider's
    status: ItemStatus | None = None

    def text(self) -> str:
        return "".join(part.text for part in self.content or ())


InputItem = Annotated[
    Annotated[MessageItem, Tag("[message]")]
    | Annotated[FunctionCallItem, Tag("[function_call]")]
    | Annotated[FunctionCallOutputItem, Tag("[function_call_output]")]
    | Annotated[ReasoningItem, Tag("[reasoning]")],
    Discriminator(_type_of("message")),  # a message may leave its type out: {"role": ..., "content": ...}
]


class ItemList(BaseModel):
    """Stored items, (de)serialized as one JSON document."""

    items: list[InputItem]


# ---- tools, text format, reasoning -------------------------------------------------------------------------


class FunctionTool(_Request):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(BaseModel):
    """A hosted tool (web_search, file_search, computer_use_preview...): refused by the route, by its type."""

    model_config = ConfigDict(extra="allow")
    type: str


ResponseTool = Annotated[
    Annotated[FunctionTool, Tag("[function]")] | Annotated[OtherTool, Tag("[other]")],
    Discriminator(lambda v: "[function]" if _type_of("")(v) == "[function]" else "[other]"),
]


class FunctionToolChoice(_Request):
    type: Literal["function"]
    name: str


class OtherToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


ToolChoiceIn = Annotated[
    Annotated[FunctionToolChoice, Tag("[function]")] | Annotated[OtherToolChoice, Tag("[other]")],
    Discriminator(lambda v: "[function]" if _type_of("")(v) == "[function]" else "[other]"),
]


class TextFormatText(_Request):
    type: Literal["text"]


class TextFormatJSONObject(_Request):
    type: Literal["json_object"]


class TextFormatJSONSchema(_Request):
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None  # generation is always strictly constrained

    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, populate_by_name=True, serialize_by_alias=True
    )


TextFormat = Annotated[
    Annotated[TextFormatText, Tag("[text]")]
    | Annotated[TextFormatJSONObject, Tag("[json_object]")]
    | Annotated[TextFormatJSONSchema, Tag("[json_schema]")],
    Discriminator(_type_of("")),
]


class TextConfig(_Request):
    format: TextFormat = Field(default_factory=lambda: TextFormatText(type="text"))
    # a hint to OpenAI's models; tandem's models write what they write, so only the default is honest
    verbosity: Literal["medium"] | None = None


class ReasoningConfig(_Request):
    # none/minimal turn the template's thinking off, the others on (as chat's reasoning_effort)
    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    # tandem writes no summaries: the reasoning itself is the reasoning item's content
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptions(_Request):
    include_obfuscation: bool = True  # tandem pads no events: nothing to turn off


def _message_of_text(value: Any) -> Any:
    return [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value


# ---- the request -------------------------------------------------------------------------------------------


class ResponseRequest(_Request):
    model: str = Field(min_length=1)
    input: Annotated[list[InputItem], BeforeValidator(_message_of_text)]
    instructions: str | None = None
    tools: list[ResponseTool] = Field(default_factory=list)
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceIn = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig = Field(default_factory=TextConfig)
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_TOKEN_COUNT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None  # tandem's prefix cache needs no key
    service_tier: Literal["auto", "default"] | None = None
    store: bool = True
    previous_response_id: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    truncation: Literal["disabled"] | None = None  # "auto" would drop input silently
    include: list[str] | None = None
    background: bool | None = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
