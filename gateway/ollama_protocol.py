"""Ollama's native API shapes (field names and defaults as in Ollama's docs/api.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.openai_protocol import INT64_MAX, INT64_MIN, MAX_TOKEN_COUNT
from gateway.outbound import Outbound

# The Ollama API version tandem implements; clients such as Open WebUI check it.
OLLAMA_API_VERSION = "0.12.0"


def timestamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class _Lenient(BaseModel):
    # Ollama ignores fields it does not know; clients send extras (e.g. "truncate", "shift").
    # NaN and infinities (Python's JSON parser accepts them) are no valid value of any field.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class OllamaOptions(BaseModel):
    """Runtime options. Ollama ignores options it cannot use (num_gpu, mirostat...); so does tandem."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=MAX_TOKEN_COUNT)
    min_p: float | None = Field(None, ge=0, le=1)
    # -1: until stop or context end; -2: fill the context
    num_predict: int | None = Field(None, ge=-2, le=MAX_TOKEN_COUNT)
    num_ctx: int | None = Field(None, gt=0, le=MAX_TOKEN_COUNT)
    repeat_penalty: float | None = Field(None, gt=0, le=10)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: list[str] | None = None


class OllamaFunctionCall(_Lenient):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)  # an object, not JSON text as in OpenAI's
    index: int | None = None


class OllamaToolCall(_Lenient):
    id: str | None = None
    function: OllamaFunctionCall


class OllamaMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None  # assistant messages
    tool_name: str | None = None  # tool messages: the function whose result this is
    thinking: str | None = None  # assistant messages of thinking models


class OllamaFunction(_Lenient):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class OllamaTool(_Lenient):
    type: Literal["function"] = "function"
    function: OllamaFunction


class _OllamaRequest(_Lenient):
    model: str = Field(min_length=1)
    format: str | dict[str, Any] | None = None
    options: OllamaOptions | None = None
    stream: bool = True
    keep_alive: str | int | float | None = None


class ChatRequest(_OllamaRequest):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[OllamaTool] | None = None
    think: bool | Literal["low", "medium", "high"] | None = None


class GenerateRequest(_OllamaRequest):
    prompt: str = ""
    suffix: str | None = None
    images: list[str] | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    context: list[Annotated[int, Field(ge=0, le=MAX_TOKEN_COUNT)]] | None = None  # token ids
    think: bool | Literal["low", "medium", "high"] | None = None


class ShowRequest(_Lenient):
    model: str | None = None
    name: str | None = None  # the older spelling
    verbose: bool = False


class Timings(Outbound):
    total_duration: int  # nanoseconds, as Ollama reports them
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


class FunctionCallOut(Outbound):
    name: str
    arguments: dict[str, Any]


class ToolCallOut(Outbound):
    function: FunctionCallOut


class AssistantMessage(Outbound):
    role: Literal["assistant"] = "assistant"
    content: str
    thinking: str | None = None  # a thinking model's reasoning, apart from its answer
    tool_calls: list[ToolCallOut] | None = None


class ChatResponse(Outbound):
    model: str
    created_at: str
    message: AssistantMessage
    done: bool
    done_reason: str | None = None


class GenerateResponse(Outbound):
    model: str
    created_at: str
    response: str
    done: bool
    done_reason: str | None = None
    context: list[int] | None = None


class ModelDetails(Outbound):
    parent_model: str = ""
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class ListedModel(Outbound):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class RunningModel(ListedModel):
    expires_at: str
    size_vram: int


class TagsResponse(Outbound):
    models: list[ListedModel]


class PsResponse(Outbound):
    models: list[RunningModel]


class ShowResponse(Outbound):
    modelfile: str
    parameters: str
    template: str
    system: str = ""
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class VersionResponse(Outbound):
    version: str


class EmbedRequest(_Lenient):
    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1, le=MAX_TOKEN_COUNT)
    options: OllamaOptions | None = None
    keep_alive: str | int | float | None = None


class EmbedResponse(Outbound):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class LegacyEmbeddingsRequest(_Lenient):
    model: str = Field(min_length=1)
    prompt: str
    options: OllamaOptions | None = None
    keep_alive: str | int | float | None = None


class LegacyEmbeddingsResponse(Outbound):
    embedding: list[float]
