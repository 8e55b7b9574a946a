"""OpenAI request and response shapes (field names as in the OpenAI API reference), plus vLLM's extras."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from backends.sampling_options import SamplingOptions
from gateway.api_error import ErrorBody, ErrorResponse  # noqa: F401 (the envelope, defined apart)
from gateway.outbound import Outbound

# Fields tandem does not implement: accepted only when null, else 400 naming them.
UNSUPPORTED_CHAT_FIELDS = (
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
)


# Every number a request carries is bounded here, at the edge: an out-of-range value is a 400 naming it,
# never an overflow deep in a backend (a seed past 2^63 once killed the paged engine's thread).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # seeds, as vLLM bounds them
MAX_TOKEN_COUNT = 2**31 - 1  # token counts and top_k: far beyond any context, within every int32
MAX_CHOICES = 128


class _Request(BaseModel):
    # OpenAI answers 400 "Unrecognized request argument supplied" for unknown fields; so do we.
    # NaN and infinities (Python's JSON parser accepts them) are no valid value of any field.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class StreamOptions(_Request):
    include_usage: bool = False


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ImageURL(_Request):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Request):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCallIn(_Request):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallIn(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")  # refusal, audio... carry nothing a template renders

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant messages
    tool_call_id: str | None = None  # tool messages

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


class FunctionDefinition(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinitionIn(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


class _SamplingFields(_Request):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKEN_COUNT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None
    # vLLM / llama.cpp extras
    top_k: int | None = Field(None, ge=-1, le=MAX_TOKEN_COUNT)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0, le=MAX_TOKEN_COUNT)

    @field_validator("seed")
    @classmethod
    def _seed_per_choice(cls, value: int | None, info: ValidationInfo) -> int | None:
        # choice i samples with seed + i: the last one must still be an int64
        n = info.data.get("n", 1)
        if value is not None and value + n - 1 > INT64_MAX:
            raise ValueError(f"with n={n}, seed must be at most {INT64_MAX - n + 1} (seed + n - 1 in int64)")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop sequences")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling_options(self) -> SamplingOptions:
        return SamplingOptions(
            n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty, seed=self.seed,
            stop=None if self.stop is None else tuple(self.stop_list()), logit_bias=self.logit_bias or {},
            ignore_eos=self.ignore_eos, min_tokens=self.min_tokens,
        )  # fmt: skip


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKEN_COUNT)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    # thinking models: "none"/"minimal" turn the template's thinking off, the others on; a model that
    # cannot think refuses it (400), as OpenAI's non-reasoning models do
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    tools: list[ToolDefinitionIn] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)


# ---- responses -------------------------------------------------------------------------------------------


class PromptTokensDetails(Outbound):
    cached_tokens: int = 0  # prompt tokens a prefix cache held: not computed again


class Usage(Outbound):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @property
    def cached_tokens(self) -> int:
        return self.prompt_tokens_details.cached_tokens if self.prompt_tokens_details else 0


class TopLogprob(Outbound):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Outbound):
    content: list[ChatTokenLogprob] | None


class CompletionLogprobs(Outbound):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class FunctionCallOut(Outbound):
    name: str
    arguments: str  # JSON text


class ToolCallOut(Outbound):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(Outbound):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None
    reasoning_content: str | None = None  # vLLM's field: a thinking model's reasoning, apart from its answer


class ChatChoice(Outbound):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletion(Outbound):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class _WithoutNulls(Outbound):
    """Leaves out unset fields: in a streamed call's later deltas a null `type` or `name` would replace
    what the first delta said (the openai SDK's accumulator assigns `type` as it comes)."""

    @model_serializer(mode="wrap")
    def _drop_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class FunctionCallDelta(_WithoutNulls):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_WithoutNulls):
    """A piece of a streamed call: the first carries its id, type and name, the next ones arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatDelta(Outbound):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(Outbound):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(Outbound):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionChoice(Outbound):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class Completion(Outbound):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(Outbound):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tandem"
    # tandem extras: which backend serves it and under which names
    backend: str
    aliases: list[str] = Field(default_factory=list)
    context_length: int | None = None
    state: str = "loaded"  # loaded | loading | unloaded: tandem loads models on first use
    # as vLLM's cards: a LoRA adapter's parent (and root) is the model it runs on; a model's root is itself
    root: str | None = None
    parent: str | None = None


class ModelList(Outbound):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=MAX_TOKEN_COUNT)
    user: str | None = None


class Embedding(Outbound):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string of little-endian float32 with encoding_format=base64


class EmbeddingUsage(Outbound):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Outbound):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
