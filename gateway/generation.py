"""From an OpenAI request to backend GenerationRequests: prompt, defaults, limits, capability checks."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from backends.base import (
    GenerationRequest,
    Prompt,
    PromptTooLongError,
    RenderOptions,
    SamplingParams,
    StructuredOutput,
)
from backends.chat_template import ChatTemplateError
from backends.conversation import Conversation, Message, Role
from backends.sampling_options import SamplingOptions
from gateway.errors import APIError, bad_request
from gateway.openai_protocol import UNSUPPORTED_CHAT_FIELDS, ChatCompletionRequest, CompletionRequest
from gateway.registry import ServedModel


@dataclass(frozen=True, slots=True)
class PreparedGeneration:
    """The n backend requests of one API call; they share the prompt."""

    requests: list[GenerationRequest]
    prompt_tokens: int
    prompt: Prompt | None = None  # chat requests: the rendered conversation (its tool-call format)

    @property
    def n(self) -> int:
        return len(self.requests)


def _context_error(context: int, prompt: int, max_tokens: int | None) -> APIError:
    asked = f" and {max_tokens} in the completion" if max_tokens else ""
    return bad_request(
        f"This model's maximum context length is {context} tokens. However, you requested "
        f"{prompt + (max_tokens or 0)} tokens ({prompt} in the prompt{asked}). "
        "Please reduce the length of the prompt or the completion.",
        param="messages",
        code="context_length_exceeded",
    )


# A prompt longer than this many UTF-8 bytes per context token cannot fit, whatever it tokenizes to, and is
# refused before it is rendered or tokenized (both CPU work proportional to its size). Real tokenizers
# average 3-5 bytes per token on text and stay well under 32 even on runs of whitespace or punctuation.
BYTES_PER_TOKEN = 32


def check_prompt_size(model: ServedModel, size_bytes: int, param: str = "messages") -> None:
    """The same 400 context_length_exceeded as an over-long token count, before spending CPU on the prompt."""
    context = model.backend.context_length
    if size_bytes > context * BYTES_PER_TOKEN:
        raise bad_request(
            f"This model's maximum context length is {context} tokens. However, your prompt is {size_bytes} "
            f"bytes, more than {context} tokens can hold (at most {BYTES_PER_TOKEN} bytes a token). "
            "Please reduce the length of the prompt.",
            param=param,
            code="context_length_exceeded",
        )


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def _check_features(
    request: SamplingOptions, model: ServedModel, logprobs: int | None, structured: StructuredOutput | None
) -> None:
    can = model.backend.capabilities
    forced_call = structured is not None and structured.kind == "tool_calls"
    checks = (  # (parameter, used by this request, honoured by the backend)
        ("logprobs", logprobs is not None, can.logprobs),
        ("logit_bias", bool(request.logit_bias), can.logit_bias),
        ("ignore_eos", request.ignore_eos, can.ignore_eos),
        ("min_tokens", request.min_tokens > 0, can.min_tokens),
        ("response_format", structured is not None and not forced_call, can.structured_output),
        ("tool_choice", forced_call, can.structured_output),
    )
    for feature, in_use, supported in checks:
        if in_use and not supported:
            raise bad_request(
                f"'{feature}' is not supported by backend '{model.backend.kind}' "
                f"serving '{model.spec.name}'.",
                param=feature,
                code="unsupported_parameter",
            )


_INTEGER = re.compile(r"-?[0-9]+")
_MAX_ID_DIGITS = 12


def _logit_bias(request: SamplingOptions, vocab_size: int) -> dict[int, float]:
    """The request's logit_bias with token-id keys, each checked against the model's vocabulary."""
    bias: dict[int, float] = {}
    for key, value in request.logit_bias.items():
        # ASCII digits only: str.isdigit() also accepts "²" and other digits that int() refuses
        if not _INTEGER.fullmatch(key):
            raise bad_request(
                f"Invalid logit_bias key {key[:40]!r}: keys must be token ids.", param="logit_bias"
            )
        # a vocabulary's ids have few digits; int() of thousands of them is slow, then refused
        if len(key) > _MAX_ID_DIGITS or not 0 <= int(key) < vocab_size:
            raise bad_request(
                f"Invalid logit_bias key {key[:40]}: not a token id of this model.", param="logit_bias"
            )
        bias[int(key)] = value
    return bias


def _check_n(request: SamplingOptions, model: ServedModel) -> None:
    """The n choices are n requests to the backend: more than it can ever hold would be refused with a
    503 that no retry can fix."""
    limit = model.backend.max_requests
    if request.n > limit:
        raise bad_request(
            f"'n' is {request.n}, but model '{model.spec.name}' holds at most {limit} requests at once "
            f"(running and queued): ask for at most {limit} choices.",
            param="n",
        )


@dataclass(frozen=True, slots=True)
class SamplingDefaults:
    """What a protocol assumes for parameters neither the request nor the model sets."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0


OPENAI_DEFAULTS = SamplingDefaults()
# Ollama's documented defaults (temperature 0.8, top_k 40, top_p 0.9, repeat_penalty 1.1)
OLLAMA_DEFAULTS = SamplingDefaults(temperature=0.8, top_p=0.9, top_k=40, repetition_penalty=1.1)


def _sampling(
    request: SamplingOptions,
    model: ServedModel,
    prompt_tokens: int,
    max_tokens: int | None,
    logprobs: int | None,
    seed: int | None,
    fallbacks: SamplingDefaults,
    structured: StructuredOutput | None,
    logit_bias: dict[int, float],
    preserved: frozenset[int],
) -> SamplingParams:
    context = model.backend.context_length
    if prompt_tokens >= context or (max_tokens is not None and prompt_tokens + max_tokens > context):
        raise _context_error(context, prompt_tokens, max_tokens)
    defaults = model.spec.parameters
    room = context - prompt_tokens
    if max_tokens is None:
        max_tokens = min(defaults.max_tokens or room, room)

    def pick(name: str) -> float:
        value = getattr(request, name)
        if value is None:
            value = getattr(defaults, name)
        return getattr(fallbacks, name) if value is None else value

    return SamplingParams(
        max_tokens=max_tokens,
        temperature=pick("temperature"),
        top_p=pick("top_p"),
        top_k=max(int(pick("top_k")), 0),  # vLLM spells "disabled" as -1
        min_p=pick("min_p"),
        seed=seed,
        stop=request.stop if request.stop is not None else tuple(defaults.stop or ()),
        presence_penalty=pick("presence_penalty"),
        frequency_penalty=pick("frequency_penalty"),
        repetition_penalty=pick("repetition_penalty"),
        logprobs=logprobs,
        logit_bias=logit_bias,
        ignore_eos=request.ignore_eos,
        min_tokens=min(request.min_tokens, max_tokens),
        structured=structured,
        preserved_token_ids=preserved,
    )


def prepare_tokens(
    request: SamplingOptions,
    model: ServedModel,
    prompt_ids: list[int],
    max_tokens: int | None,
    logprobs: int | None,
    request_id: str,
    fallbacks: SamplingDefaults = OPENAI_DEFAULTS,
    structured: StructuredOutput | None = None,
    prompt: Prompt | None = None,
) -> PreparedGeneration:
    """The request's n generations over `prompt_ids`, with every sampling parameter resolved."""
    _check_features(request, model, logprobs, structured)
    _check_n(request, model)
    logit_bias = _logit_bias(request, model.backend.vocab_size)  # parsed once for all n choices
    seed = request.seed if request.seed is not None else model.spec.parameters.seed
    # the special tokens the output's readers parse are written as text (backends.tools.markers)
    preserved = frozenset(prompt.marker_token_ids.values()) if prompt is not None else frozenset()
    requests = [
        GenerationRequest(
            request_id=f"{request_id}-{i}",
            prompt_token_ids=prompt_ids,
            adapter=model.adapter,  # an adapter model's LoRA (None: the base model)
            # each of the n choices gets its own stream of randomness, reproducible from the seed
            sampling=_sampling(
                request,
                model,
                len(prompt_ids),
                max_tokens,
                logprobs,
                None if seed is None else seed + i,
                fallbacks,
                structured,
                logit_bias,
                preserved,
            ),
        )
        for i in range(request.n)
    ]
    return PreparedGeneration(requests, len(prompt_ids), prompt)


def chat_prompt(model: ServedModel, conversation: Conversation, add_generation_prompt: bool = True) -> Prompt:
    """The conversation through the model's chat template, after the model's own preamble (Modelfile
    MESSAGE) and with its default system prompt if the conversation has none.

    CPU work in proportion to the prompt (a template's bounded by its sandbox): call it off the loop."""
    spec = model.spec
    if conversation.images:  # no local backend runs a vision model yet
        raise bad_request(f"model '{spec.name}' does not accept images", param="messages")
    preamble = tuple(Message.of_text(Role(m.role), m.content) for m in spec.messages)
    messages = (*preamble, *conversation.messages)
    if spec.system is not None and not any(m.role in (Role.SYSTEM, Role.DEVELOPER) for m in messages):
        messages = (Message.of_text(Role.SYSTEM, spec.system), *messages)
    conversation = dataclasses.replace(conversation, messages=messages)
    check_prompt_size(model, sum(utf8_size(m.text) + _calls_size(m) for m in messages))
    limit = model.backend.context_length * BYTES_PER_TOKEN
    # a Modelfile's TEMPLATE: bounded by this model's context too
    options = RenderOptions(
        template=spec.chat_template,
        max_chars=limit,
        max_bytes=limit,
        add_generation_prompt=add_generation_prompt,
        tool_parser=spec.tool_parser,  # the format the output is read in: its markers are written
    )
    try:
        return model.backend.render_prompt(conversation, options)
    except ChatTemplateError as exc:
        raise bad_request(str(exc), param="messages") from None
    except PromptTooLongError as exc:
        check_prompt_size(model, exc.size_bytes)
        raise  # not reached: over max_bytes is over what check_prompt_size allows


def _calls_size(message: Message) -> int:
    return sum(utf8_size(call.name) + utf8_size(call.arguments) for call in message.tool_calls)


def chat_sampling_check(request: ChatCompletionRequest) -> None:
    for name in UNSUPPORTED_CHAT_FIELDS:
        if getattr(request, name) is not None:
            raise bad_request(
                f"'{name}' is not supported by tandem yet.", param=name, code="unsupported_parameter"
            )


def prepare_chat(
    request: ChatCompletionRequest,
    model: ServedModel,
    conversation: Conversation,
    request_id: str,
    structured: StructuredOutput | None = None,
) -> PreparedGeneration:
    chat_sampling_check(request)
    prompt = chat_prompt(model, conversation)
    logprobs = None
    if request.logprobs:
        logprobs = request.top_logprobs or 0
    elif request.top_logprobs is not None:
        raise bad_request("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    max_tokens = request.max_completion_tokens or request.max_tokens
    options = request.sampling_options()
    ids = prompt.token_ids
    defaults = OPENAI_DEFAULTS
    return prepare_tokens(options, model, ids, max_tokens, logprobs, request_id, defaults, structured, prompt)


def completion_prompts(request: CompletionRequest) -> list[str | list[int]]:
    """The prompts of a completions request: a string, token ids, or a batch of either."""
    prompt = request.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("'prompt' must not be empty.", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[arg-type]


def prepare_completion(
    request: CompletionRequest, model: ServedModel, prompt: str | list[int], request_id: str
) -> PreparedGeneration:
    if request.echo:
        raise bad_request("'echo' is not supported yet.", param="echo", code="unsupported_parameter")
    if request.suffix:
        raise bad_request("'suffix' is not supported.", param="suffix", code="unsupported_parameter")
    if request.best_of not in (None, request.n):
        raise bad_request(
            "'best_of' other than n is not supported.", param="best_of", code="unsupported_parameter"
        )
    if isinstance(prompt, str):
        check_prompt_size(model, utf8_size(prompt), param="prompt")
        prompt_ids = model.backend.tokenize(prompt, add_special_tokens=True)
    else:
        vocab = model.backend.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise bad_request(f"Token ids in 'prompt' must be in [0, {vocab}).", param="prompt")
        prompt_ids = prompt
    if not prompt_ids:
        raise bad_request("'prompt' must not be empty.", param="prompt")
    options = request.sampling_options()
    return prepare_tokens(options, model, prompt_ids, request.max_tokens, request.logprobs, request_id)
