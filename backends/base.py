"""The seam between the gateway and every backend: typed requests in, typed chunks out.

Nothing here imports torch or the HTTP stack, so both sides can depend on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Literal, Protocol, runtime_checkable

from backends.conversation import Conversation
from backends.stats import BackendStats


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # the client went away or the server is shutting down


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """Constrained decoding: the output must be one JSON object, matching `schema` when one is given (or,
    for kind structural_tag, text whose tool calls are constrained).

    The schema is kept as JSON text so SamplingParams stays immutable and comparable; it is compiled
    (and checked) by backends.structured.
    """

    # tool_calls: a forced tool call (tool_choice required or named), constrained like json_schema to a
    # schema of the call objects ({"name": ..., "arguments": ...}) that the gateway turns into calls.
    # structural_tag: free text whose tool calls, once opened, are constrained (strict functions under
    # tool_choice auto); `schema` is then xgrammar's structural-tag JSON (backends.tools.strict), not a schema
    kind: Literal["json_object", "json_schema", "tool_calls", "structural_tag"]
    schema: str | None = None  # JSON text; required for every kind but json_object
    # special tokens the grammar sees as their text (SamplingParams.preserved_token_ids, whose text the
    # backend writes): a structural tag's markers, e.g. Mistral's [TOOL_CALLS], are matched as text
    preserved_token_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if (self.kind != "json_object") != (self.schema is not None):
            raise ValueError("a schema goes with kinds 'json_schema', 'tool_calls' and 'structural_tag' only")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens. The gateway resolves defaults, so every field here is concrete."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None  # None: off; k: the chosen token's logprob plus the top k
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    ignore_eos: bool = False
    min_tokens: int = 0
    structured: StructuredOutput | None = None  # the grammar ends the output: min_tokens and ignore_eos yield
    # special tokens whose text the output is written with (llama-server's "preserved tokens"): the
    # markers of the tool-call or reasoning format the gateway reads this output in; any other special
    # token still adds nothing to the text
    preserved_token_ids: frozenset[int] = frozenset()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How the gateway wants a conversation rendered, beyond what the model itself says."""

    template: str | None = None  # a Jinja chat template replacing the model's own (Modelfile TEMPLATE)
    max_chars: int | None = None  # bound on the replacing template's render
    max_bytes: int | None = None  # a longer rendered prompt is refused (PromptTooLongError) untokenized
    add_generation_prompt: bool = True  # False: the conversation as it stands (/tokenize asks for it)
    tool_parser: str | None = None  # the model's `tool_parser:` setting: the format its output is read in


@dataclass(frozen=True, slots=True)
class Prompt:
    """A rendered conversation, ready to generate from. Room for what later prompts carry besides tokens
    (multimodal inputs, a LoRA adapter), as vLLM's EngineCoreRequest carries mm_features and lora_request."""

    token_ids: list[int]
    text: str  # the rendered template, for size checks and debugging
    tool_format: str | None = None  # the tool-call format the template teaches (backends.tools), if any
    tools_described: bool = False  # the template has no tool section: the tools went into a system message
    reasoning: bool = False  # the output may open with <think>…</think> (a thinking template, thinking on)
    reasoning_open: bool = False  # the generation prompt already opened it: the output starts inside
    # the markers the output's readers parse (tool calls, reasoning) that are single tokens of this
    # vocabulary, by text: their ids go into SamplingParams.preserved_token_ids (backends.tools.markers)
    marker_token_ids: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    adapter: str | None = None  # a LoRA adapter's name (None: the base model), as vLLM's lora_request


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (token_id, token text, logprob), best first


@dataclass(slots=True)
class GenerationChunk:
    """What one generation produced since the previous chunk.

    `text` is already safe to show: complete UTF-8 only, stop strings cut off.
    `finish_reason` is set on the last chunk of a generation, and only there.
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None
    stop_sequence: str | None = None  # the stop string that ended the generation, when one did
    # on a request's first chunk: prompt tokens whose KV a cache held, so they were not computed
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a loaded model is, for listings (/api/tags, /api/show, /v1/models)."""

    format: str  # "gguf", "safetensors"
    family: str  # architecture: "llama", "qwen2", ...
    parameter_count: int
    quantization: str  # "F32", "BF16", "Q4_K_M", ...
    size_bytes: int  # on disk
    chat_template: str | None


@dataclass(frozen=True, slots=True)
class BackendCapabilities:
    """What a backend honours beyond plain generation. The gateway refuses (400) a request that needs
    one its model lacks rather than silently ignoring part of it; everything is off unless declared."""

    logprobs: bool = False
    logit_bias: bool = False
    ignore_eos: bool = False
    min_tokens: bool = False
    structured_output: bool = False  # JSON mode and JSON schemas (SamplingParams.structured)
    embeddings: bool = False  # Backend.embed


class BackendError(Exception):
    """A request the backend refuses. The gateway answers the subclasses below with their own status; any
    other BackendError is the request's fault (400, code "invalid_request")."""


class PromptTooLongError(BackendError):
    """The rendered prompt is longer than RenderOptions.max_bytes (the gateway answers 400
    context_length_exceeded); raised before tokenizing it."""

    def __init__(self, size_bytes: int) -> None:
        super().__init__(f"the rendered prompt is {size_bytes} bytes")
        self.size_bytes = size_bytes


class QueueFullError(BackendError):
    def __init__(self, model: str, retry_after_s: int = 1) -> None:
        super().__init__(f"model {model!r} is at capacity: its request queue is full, retry later")
        self.retry_after_s = retry_after_s


class BackendUnavailableError(BackendError):
    """The backend is shutting down, failed to load, or failed (BackendState.FAILED)."""


class GenerationFailedError(BackendError):
    """One request failed inside the backend, which serves on: neither the client's fault nor a reason to
    skip the deployment. The gateway answers 500 (or an error event, once streaming)."""


class BackendState(StrEnum):
    READY = "ready"
    # An error the backend could not pin on one request (a failed engine step, a dead worker thread): it
    # has failed its in-flight requests, refuses new ones, and must be replaced (the ModelManager reloads it).
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class BackendHealth:
    state: BackendState
    error: str | None = None  # why it failed


class GenerationStream(Protocol):
    """The chunks of one admitted request (backends.streams.RequestStream implements it)."""

    def __aiter__(self) -> AsyncIterator[GenerationChunk]: ...

    async def __anext__(self) -> GenerationChunk: ...

    def abort(self) -> None:
        """Stop the request now and free what it holds; safe to call at any time, more than once."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """One loaded model. Implementations: backends.llamacpp, backends.paged."""

    kind: ClassVar[str]  # "llamacpp", "paged", ... sent as x-tandem-backend

    @property
    def capabilities(self) -> BackendCapabilities: ...

    @property
    def health(self) -> BackendHealth:
        """Cheap, callable from any thread; the ModelManager polls it to replace a failed backend."""
        ...

    @property
    def context_length(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_requests(self) -> int:
        """The most requests it holds at once, running and queued. One API call's n choices are that many
        requests: more than this can never be admitted, and the gateway answers 400, not a 503 to retry."""
        ...

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special-token text (e.g. <|im_start|>) becomes the special token.

        add_special_tokens: prepend BOS where the model wants one (completions); chat prompts pass
        False because the rendered template already carries its own BOS text.
        """
        ...

    def detokenize(self, token_ids: list[int]) -> str:
        """The text of token ids, special tokens written out (<|im_start|>): what tokenize read them from.
        Each id must be in [0, vocab_size); a partial UTF-8 sequence shows as U+FFFD."""
        ...

    def render_prompt(self, conversation: Conversation, options: RenderOptions) -> Prompt:
        """The conversation through the model's chat template (or options.template), with the generation
        prompt appended, tokenized (backends.tool_prompt does it for every backend).

        Raises backends.chat_template.ChatTemplateError when the model has none or it fails on this
        conversation, PromptTooLongError over options.max_bytes (the gateway answers 400 to both).
        CPU work in proportion to the prompt: call it off the event loop.
        """
        ...

    def generate(self, request: GenerationRequest) -> GenerationStream:
        """Admit the request and return its stream of chunks.

        Admission happens at the call, not at the first iteration: a full queue raises QueueFullError
        here, before any HTTP response has started. Closing the stream early (or dropping it) aborts
        the request and frees what it held.
        """
        ...

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """One L2-normalized vector per input (token ids, each within the context length).

        Only where capabilities.embeddings: the gateway checks that before calling.
        """
        ...

    def stats(self) -> BackendStats:
        """A snapshot for /metrics; cheap, callable from any thread."""
        ...

    async def aclose(self) -> None: ...
