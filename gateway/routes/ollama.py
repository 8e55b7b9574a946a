"""Ollama's native generation endpoints: POST /api/chat and POST /api/generate (NDJSON streaming)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from backends.base import Prompt, StructuredOutput
from backends.conversation import Conversation, Message, Role, ToolCall
from backends.sampling_options import SamplingOptions
from backends.tools.events import ContentDelta, ToolCallEnd
from gateway.deps import CallContext, CallDep
from gateway.dispatch import dispatch
from gateway.durations import parse_keep_alive
from gateway.errors import bad_request
from gateway.generation import (
    OLLAMA_DEFAULTS,
    PreparedGeneration,
    chat_prompt,
    check_prompt_size,
    prepare_tokens,
    utf8_size,
)
from gateway.ollama_protocol import (
    AssistantMessage,
    ChatRequest,
    ChatResponse,
    FunctionCallOut,
    GenerateRequest,
    GenerateResponse,
    OllamaOptions,
    Timings,
    ToolCallOut,
    timestamp,
)
from gateway.ollama_upstream import remote_ollama_chat, remote_ollama_generate
from gateway.registry import DEFAULT_KEEP_ALIVE, ManagedModel, ServedModel
from gateway.routes.ollama_models import resolve_ollama_model
from gateway.routing import RemoteModel
from gateway.streaming import Generation, open_generation
from gateway.structured_output import ollama_structured
from gateway.tool_calls import OutputEvent, ReasoningText, ToolCallReader, ToolPlan, tool_plan
from gateway.tool_conversation import ollama_conversation

logger = logging.getLogger("tandem.gateway")
router = APIRouter(prefix="/api", tags=["ollama"])
NDJSON = "application/x-ndjson"


MAX_STOP_SEQUENCES = 16  # as on /v1


def _sampling_options(options: OllamaOptions | None) -> SamplingOptions:
    o = options or OllamaOptions()  # each option's range is checked where OllamaOptions is parsed
    if o.model_extra:
        logger.info("ignoring options tandem has no use for: %s", ", ".join(sorted(o.model_extra)))
    if o.stop is not None and len(o.stop) > MAX_STOP_SEQUENCES:
        raise bad_request(f"invalid option stop: at most {MAX_STOP_SEQUENCES} stop sequences")
    return SamplingOptions(
        temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, min_p=o.min_p, seed=o.seed,
        stop=None if o.stop is None else tuple(o.stop), presence_penalty=o.presence_penalty,
        frequency_penalty=o.frequency_penalty, repetition_penalty=o.repeat_penalty,
    )  # fmt: skip


def _prepare(
    body: ChatRequest | GenerateRequest,
    model: ServedModel,
    prompt_ids: list[int],
    request_id: str,
    structured: StructuredOutput | None,
    prompt: Prompt | None = None,
) -> PreparedGeneration:
    options = body.options or OllamaOptions()
    context = min(options.num_ctx or model.backend.context_length, model.backend.context_length)
    if len(prompt_ids) >= context:
        raise bad_request(f"the prompt is {len(prompt_ids)} tokens, the context is {context}")
    room = context - len(prompt_ids)
    max_tokens = (
        None if options.num_predict is None else room if options.num_predict < 0 else options.num_predict
    )
    if max_tokens is not None:
        max_tokens = min(max_tokens, room) or 1
    elif options.num_ctx is not None:
        max_tokens = min(model.spec.parameters.max_tokens or room, room)
    fields = _sampling_options(body.options)
    return prepare_tokens(
        fields, model, prompt_ids, max_tokens, None, request_id, OLLAMA_DEFAULTS, structured, prompt
    )


def _timings(generation: Generation, eval_count: int) -> dict:
    """Ollama's timing fields, in nanoseconds, measured."""
    end = time.perf_counter_ns()
    first = generation.first_token_ns or end
    start, load = generation.started_ns, int(generation.load_seconds * 1e9)
    return Timings(
        total_duration=end - start + load, load_duration=load, prompt_eval_count=generation.prompt_tokens,
        prompt_eval_duration=first - start, eval_count=eval_count, eval_duration=end - first,
    ).model_dump()  # fmt: skip


# (text, done, done_reason, tool calls, thinking) -> one response object
Piece = Callable[[str, bool, str | None, list[ToolCall], str], BaseModel]


def _tool_calls_out(calls: list[ToolCall]) -> list[ToolCallOut]:
    out = []
    for call in calls:
        arguments = call.arguments_object()
        if not isinstance(arguments, dict):  # Ollama's arguments are an object: what the model wrote stays
            arguments = {"arguments": arguments}  # visible rather than dropped
        out.append(ToolCallOut(function=FunctionCallOut(name=call.name, arguments=arguments)))
    return out


async def _respond(
    request: Request,
    generation: Generation,
    stream: bool,
    piece: Piece,
    final_fields: Callable[[list[int]], dict] = lambda _: {},
    plan: ToolPlan | None = None,
) -> StreamingResponse | dict:
    """Shared by chat and generate: `piece(text, done, done_reason, tool calls)` builds one response
    object; the last one also carries `final_fields(generated token ids)` and the timings. With a plan, the
    output is read for tool calls; each call is sent once complete, as Ollama sends them."""

    def last(
        text: str, reason: str | None, produced: list[int], calls: list[ToolCall], thinking: str = ""
    ) -> dict:
        timings = _timings(generation, len(produced))
        done = piece(text, True, reason, calls, thinking).model_dump(exclude_none=True)
        return done | final_fields(produced) | timings

    if not stream:
        async with generation:
            result = (await generation.collect(request))[0]
        if plan is None:
            return last(result.text, result.finish_reason, result.token_ids, [])
        reader = plan.new_reader()
        reader.feed(result.text)
        reader.finish()
        return last(reader.content, result.finish_reason, result.token_ids, reader.calls, reader.reasoning)

    def line(text: str, calls: list[ToolCall], thinking: str = "") -> str:
        return json.dumps(piece(text, False, None, calls, thinking).model_dump(exclude_none=True)) + "\n"

    def lines_of(reader: ToolCallReader, events: list[OutputEvent]) -> list[str]:
        out = []
        for event in events:
            if isinstance(event, ReasoningText):
                out.append(line("", [], event.text))
            elif isinstance(event, ContentDelta):
                out.append(line(event.text, []))
            elif isinstance(event, ToolCallEnd):
                out.append(line("", [reader.calls[event.index]]))
        return out

    async def lines() -> AsyncIterator[str]:
        produced: list[int] = []
        reason = None
        reader = plan.new_reader() if plan is not None else None
        async with generation:
            try:
                async for _, chunk in generation.chunks():
                    produced.extend(chunk.token_ids)
                    if chunk.finish_reason is not None:
                        reason = chunk.finish_reason.value
                    if reader is not None:
                        for text in lines_of(reader, reader.feed(chunk.text)):
                            yield text
                    elif chunk.text:
                        yield line(chunk.text, [])
                if reader is not None:
                    for text in lines_of(reader, reader.finish()):
                        yield text
            except Exception as exc:  # too late for a status code: Ollama puts the error in the stream
                yield json.dumps({"error": str(exc) or "generation failed"}) + "\n"
                return
        yield json.dumps(last("", reason, produced, [])) + "\n"

    return StreamingResponse(lines(), media_type=NDJSON)


def _keep_alive(body: ChatRequest | GenerateRequest) -> float | object | None:
    if body.keep_alive is None:
        return DEFAULT_KEEP_ALIVE
    try:
        return parse_keep_alive(body.keep_alive)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


async def _load_only(call: CallContext, model: ManagedModel, keep_alive: float | object | None) -> str:
    """Ollama's way to load (or, with keep_alive 0, unload) a model: a request with nothing to generate.

    It costs a load, so it is admitted like any request: it counts against the key's and team's rpm and
    parallel limits (and reserves no tokens), and is refused with 429 over them.
    """
    admission = await call.access.admit(call.principal, model.spec.name, 0)
    call.request.state.ratelimit_headers = admission.headers
    try:
        if keep_alive == 0:
            await call.models.unload(model)
            return "unload"
        (await call.models.acquire(model, keep_alive)).release()
        return "load"
    finally:
        await admission.settle(0, 0)


@router.post("/chat", response_model=None)
async def chat(body: ChatRequest, request: Request, call: CallDep):
    keep_alive = _keep_alive(body)
    structured = await asyncio.to_thread(ollama_structured, body.format)
    if not body.messages:
        model = resolve_ollama_model(call.models, body.model, request)
        reason = await _load_only(call, model, keep_alive)
        return ChatResponse(model=body.model, created_at=timestamp(), message=AssistantMessage(content=""),
                            done=True, done_reason=reason).model_dump()  # fmt: skip
    conversation = await asyncio.to_thread(ollama_conversation, body)
    request_id = request.state.request_id

    def prepare(served: ServedModel) -> PreparedGeneration:
        prompt = chat_prompt(served, conversation)
        return _prepare(body, served, prompt.token_ids, request_id, structured, prompt)

    def piece(text: str, done: bool, reason: str | None, calls: list[ToolCall], think: str) -> ChatResponse:
        out = _tool_calls_out(calls) or None
        message = AssistantMessage(content=text, thinking=think or None, tool_calls=out)
        return ChatResponse(model=body.model, created_at=timestamp(), message=message, done=done,
                            done_reason=reason)  # fmt: skip

    async def serve(model: ManagedModel) -> StreamingResponse | dict:
        generation = await open_generation(call, model, prepare, keep_alive)
        plan = tool_plan(conversation, generation.prompt, model.spec.tool_parser)
        return await _respond(request, generation, body.stream, piece, plan=plan)

    async def on_upstream(remote: RemoteModel, requested: str) -> StreamingResponse | dict:
        return await remote_ollama_chat(call, remote, body, conversation, requested)

    return await dispatch(call, body.model, serve, on_upstream)


def _generate_prompt(body: GenerateRequest, served: ServedModel) -> list[int]:
    if body.raw:
        check_prompt_size(served, utf8_size(body.prompt), param="prompt")
        prompt_ids = served.backend.tokenize(body.prompt, add_special_tokens=True)
    else:
        if body.template is not None:
            raise bad_request("custom Go templates are not supported; send raw=true with a rendered prompt")
        system = body.system if body.system is not None else served.spec.system
        messages = [Message.of_text(Role.SYSTEM, system)] if system is not None else []
        conversation = Conversation((*messages, Message.of_text(Role.USER, body.prompt)))
        prompt_ids = chat_prompt(served, conversation).token_ids
    prompt_ids = [*(body.context or []), *prompt_ids]
    if any(not 0 <= t < served.backend.vocab_size for t in prompt_ids):
        raise bad_request("context holds token ids this model does not have")
    return prompt_ids


@router.post("/generate", response_model=None)
async def generate(body: GenerateRequest, request: Request, call: CallDep):
    if body.suffix:
        raise bad_request(f"model '{body.model}' does not support insert (suffix)")
    keep_alive = _keep_alive(body)
    structured = await asyncio.to_thread(ollama_structured, body.format)
    if not body.prompt and not body.context:
        model = resolve_ollama_model(call.models, body.model, request)
        reason = await _load_only(call, model, keep_alive)
        return GenerateResponse(model=body.model, created_at=timestamp(), response="", done=True,
                                done_reason=reason).model_dump(exclude_none=True)  # fmt: skip
    request_id, prompt_ids = request.state.request_id, list[int]()

    def prepare(served: ServedModel) -> PreparedGeneration:
        prompt_ids[:] = _generate_prompt(body, served)  # each deployment tried tokenizes anew
        return _prepare(body, served, prompt_ids, request_id, structured)

    def piece(text: str, done: bool, reason: str | None, calls: list[ToolCall], _: str) -> GenerateResponse:
        return GenerateResponse(model=body.model, created_at=timestamp(), response=text, done=done,
                                done_reason=reason)  # fmt: skip

    def final_fields(produced: list[int]) -> dict:
        return {} if body.raw else {"context": [*prompt_ids, *produced]}

    async def serve(model: ManagedModel) -> StreamingResponse | dict:
        if body.images:  # no local backend runs a vision model yet; a remote upstream may
            raise bad_request(f"model '{body.model}' does not support images")
        generation = await open_generation(call, model, prepare, keep_alive)
        return await _respond(request, generation, body.stream, piece, final_fields)

    async def on_upstream(remote: RemoteModel, requested: str) -> StreamingResponse | dict:
        return await remote_ollama_generate(call, remote, body, requested)

    return await dispatch(call, body.model, serve, on_upstream)
