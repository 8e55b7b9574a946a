"""Anthropic Messages API shapes (field names as in Anthropic's API reference): requests, the Message, and
the streamed events."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.openai_protocol import MAX_TOKEN_COUNT
from gateway.outbound import Outbound


class _Request(BaseModel):
    # Anthropic answers 400 for fields it does not know ("Extra inputs are not permitted"); so do we.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CacheControl(_Request):
    """A prompt-caching breakpoint: accepted as the hint it is (the paged engine caches prefixes by itself,
    llama.cpp reuses its slots' prefixes); no tokens are billed as cached."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(_Request):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: None = None  # null in an earlier answer sent back as it came (tandem cites nothing)


class Base64Source(_Request):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLSource(_Request):
    type: Literal["url"]
    url: str


class ImageBlock(_Request):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None

    def url(self) -> str:
        if isinstance(self.source, URLSource):
            return self.source.url
        return f"data:{self.source.media_type};base64,{self.source.data}"


class DirectCaller(_Request):
    type: Literal["direct"]


class ToolUseBlock(_Request):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    # as the SDK sends an earlier answer's call back: called by the model itself, from no server toolset
    caller: DirectCaller | None = None
    toolset_name: None = None


ToolResultPart = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(_Request):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ToolResultPart] | None = None
    is_error: bool = False
    cache_control: CacheControl | None = None


class ThinkingBlock(_Request):
    """An earlier answer's reasoning, sent back; the signature is whatever tandem gave it (nothing)."""

    type: Literal["thinking"]
    thinking: str
    signature: str = ""


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock, Field(discriminator="type")
]


class MessageParam(_Request):
    role: Literal["user", "assistant"]
    content: list[ContentBlock]

    @field_validator("content", mode="before")
    @classmethod
    def _text_is_a_block(cls, value: Any) -> Any:
        # a string is one text block (as Anthropic reads it); a list's errors then name the block at fault
        return [{"type": "text", "text": value}] if isinstance(value, str) else value


SERVER_TOOL_HINT = "only client tools (name, description, input_schema) are supported"


class ToolParam(_Request):
    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None
    strict: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _client_tools_only(cls, value: Any) -> Any:
        # server tools (web_search_20250305, bash_20250124, ...) run on Anthropic's side: name the type
        kind = value.get("type") if isinstance(value, dict) else None
        if kind not in (None, "custom"):
            raise ValueError(f"tool type {str(kind)[:64]!r} is not supported by tandem: {SERVER_TOOL_HINT}")
        return value


class _ToolChoiceBase(_Request):
    disable_parallel_tool_use: bool = False


class ToolChoiceAuto(_ToolChoiceBase):
    type: Literal["auto"]


class ToolChoiceAny(_ToolChoiceBase):
    type: Literal["any"]


class ToolChoiceTool(_ToolChoiceBase):
    type: Literal["tool"]
    name: str


class ToolChoiceNone(_Request):
    type: Literal["none"]


ToolChoiceParam = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class ThinkingEnabled(_Request):
    """budget_tokens is checked as Anthropic checks it; the thinking is bounded by max_tokens only."""

    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1024, le=MAX_TOKEN_COUNT)
    display: Literal["summarized", "omitted"] | None = None


class ThinkingAdaptive(_Request):
    type: Literal["adaptive"]
    display: Literal["summarized", "omitted"] | None = None


class ThinkingDisabled(_Request):
    type: Literal["disabled"]


ThinkingParam = Annotated[ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled, Field(discriminator="type")]


class Metadata(_Request):
    user_id: str | None = Field(None, max_length=256)


class CountTokensRequest(_Request):
    """What the prompt is made of: POST /v1/messages/count_tokens takes exactly this."""

    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = None
    cache_control: CacheControl | None = None


# The most any of Anthropic's models writes (128k, with its output-128k beta). A local model stops sooner,
# where its context ends: clients ask for 32000 whatever the model (Claude Code does).
MAX_OUTPUT_TOKENS = 128_000


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1, le=MAX_OUTPUT_TOKENS)
    # bounded: each is matched against the output's tail as it streams
    stop_sequences: list[Annotated[str, Field(max_length=1024)]] | None = Field(None, max_length=16)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=MAX_TOKEN_COUNT)
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None  # tandem has one tier: both are it

    @model_validator(mode="after")
    def _budget_below_max_tokens(self) -> MessagesRequest:
        if isinstance(self.thinking, ThinkingEnabled) and self.thinking.budget_tokens >= self.max_tokens:
            raise ValueError("thinking.budget_tokens must be less than max_tokens")
        return self


# ---- responses -------------------------------------------------------------------------------------------


class TextOut(Outbound):
    type: Literal["text"] = "text"
    text: str


class ThinkingOut(Outbound):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""  # tandem signs nothing; an empty signature round-trips


class ToolUseOut(Outbound):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: Any  # the arguments' JSON value: an object, unless the model wrote something else


ContentOut = TextOut | ThinkingOut | ToolUseOut
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "model_context_window_exceeded"]


class MessageUsage(Outbound):
    input_tokens: int  # not counting cache reads, as Anthropic counts
    output_tokens: int
    cache_read_input_tokens: int | None = None  # prompt tokens a prefix cache held (automatic here)
    cache_creation_input_tokens: int | None = None

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt (what tandem's usage records count)."""
        return (
            self.input_tokens + (self.cache_read_input_tokens or 0) + (self.cache_creation_input_tokens or 0)
        )


class Message(Outbound):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[ContentOut]
    model: str
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: MessageUsage


class TokenCount(Outbound):
    input_tokens: int


# ---- streamed events -------------------------------------------------------------------------------------


class MessageStart(Outbound):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStart(Outbound):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentOut


class TextDelta(Outbound):
    type: Literal["text_delta"] = "text_delta"
    text: str


class ThinkingDelta(Outbound):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


class InputJSONDelta(Outbound):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ContentBlockDelta(Outbound):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: TextDelta | ThinkingDelta | InputJSONDelta


class ContentBlockStop(Outbound):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class StopDelta(Outbound):
    stop_reason: StopReason
    stop_sequence: str | None = None


class MessageDelta(Outbound):
    type: Literal["message_delta"] = "message_delta"
    delta: StopDelta
    usage: MessageUsage


class MessageStop(Outbound):
    type: Literal["message_stop"] = "message_stop"


class Ping(Outbound):
    type: Literal["ping"] = "ping"


StreamEvent = (
    MessageStart
    | ContentBlockStart
    | ContentBlockDelta
    | ContentBlockStop
    | MessageDelta
    | MessageStop
    | Ping
)
