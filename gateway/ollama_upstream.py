"""Ollama /api/chat and /api/generate served by a remote (OpenAI-compatible) upstream: the request
translated into OpenAI's chat request, the answer back into Ollama's shapes, streaming or not.

The conversation is the neutral one the local path renders (gateway.tool_conversation), so tool calls,
tool results (matched to their calls) and images travel as they do there. A generate request is the chat
of its system prompt and its prompt; what only a local model can honour (raw prompts, a `context` of token
ids, Go templates, a suffix) is a 400 naming the field.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from backends.conversation import ContentPart, Conversation, ImagePart, Message, Role, TextPart
from backends.remote.upstream import UpstreamError
from backends.template_inputs import template_tools
from gateway.deps import CallContext
from gateway.errors import bad_request, upstream_api_error
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
from gateway.remote_serving import admit_remote, open_stream, release_stream, token_counts, upstream_usage
from gateway.routing import RemoteModel
from gateway.upstream_messages import openai_message

NDJSON = "application/x-ndjson"
# (content, tool calls, done, done_reason) -> one Ollama response object: a chat's or a generate's
Shape = Callable[[str, list[ToolCallOut] | None, bool, str | None], BaseModel]


def _sampling(options: OllamaOptions | None) -> dict[str, Any]:
    o = options or OllamaOptions()
    fields = {
        "temperature": o.temperature, "top_p": o.top_p, "seed": o.seed, "stop": o.stop,
        "presence_penalty": o.presence_penalty, "frequency_penalty": o.frequency_penalty,
        # vLLM's and llama-server's extras: an upstream that has none refuses them, which the client sees
        "top_k": o.top_k, "min_p": o.min_p, "repetition_penalty": o.repeat_penalty,
        "max_tokens": o.num_predict if o.num_predict is not None and o.num_predict > 0 else None,
    }  # fmt: skip
    return {key: value for key, value in fields.items() if value is not None}


def chat_payload(body: ChatRequest | GenerateRequest, conversation: Conversation) -> dict[str, Any]:
    if body.think is not None:
        raise bad_request(f"model '{body.model}' is served by a remote upstream: 'think' is not passed on")
    payload: dict[str, Any] = {
        "messages": [openai_message(m) for m in conversation.messages],
        **_sampling(body.options),
    }
    if conversation.tools:
        payload["tools"] = template_tools(conversation)
    if body.format == "json":
        payload["response_format"] = {"type": "json_object"}
    elif isinstance(body.format, dict):
        payload["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "format", "schema": body.format},
        }
    return payload


def _local_only(body: GenerateRequest) -> str | None:
    """The first field set that only a local model can honour (an OpenAI upstream takes messages)."""
    fields = (
        ("raw", body.raw),  # a prompt already rendered for the model's template: the upstream renders its own
        ("context", bool(body.context)),  # token ids of this tandem's tokenizer, not the upstream's
        ("template", body.template is not None),
        ("suffix", bool(body.suffix)),  # fill-in-the-middle: no chat request carries one
    )
    return next((name for name, used in fields if used), None)


def generate_payload(body: GenerateRequest) -> dict[str, Any]:
    field = _local_only(body)
    if field is not None:
        raise bad_request(f"model '{body.model}' is served by a remote upstream, which cannot honour "
                          f"'{field}': send a plain prompt, or use /api/chat")  # fmt: skip
    messages = [Message.of_text(Role.SYSTEM, body.system)] if body.system is not None else []
    content: list[ContentPart] = [TextPart(body.prompt)] if body.prompt else []
    content.extend(ImagePart(image) for image in body.images or ())
    return chat_payload(body, Conversation((*messages, Message(Role.USER, tuple(content)))))


def _calls(raw: list[dict[str, Any]]) -> list[ToolCallOut]:
    calls = []
    for call in raw:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = function.get("arguments")
        if not isinstance(arguments, dict):  # an object in Ollama's shape; what the model wrote stays visible
            arguments = {"arguments": arguments}
        calls.append(
            ToolCallOut(function=FunctionCallOut(name=function.get("name") or "", arguments=arguments))
        )
    return calls


def _done_reason(reason: str | None) -> str | None:
    return "stop" if reason == "tool_calls" else reason  # Ollama ends a call's answer with "stop"


def _chat_shape(model: str) -> Shape:
    def shape(content: str, calls: list[ToolCallOut] | None, done: bool, reason: str | None) -> ChatResponse:
        message = AssistantMessage(content=content, tool_calls=calls)
        return ChatResponse(
            model=model, created_at=timestamp(), message=message, done=done, done_reason=reason
        )

    return shape


def _generate_shape(model: str) -> Shape:
    # no tools go out with a generate request, so no calls come back to place
    def shape(content: str, _: list[ToolCallOut] | None, done: bool, reason: str | None) -> GenerateResponse:
        return GenerateResponse(model=model, created_at=timestamp(), response=content, done=done,
                                done_reason=reason)  # fmt: skip

    return shape


def _final(
    shape: Shape, started: int, usage: dict[str, Any], reason: str | None, content: str = "",
    calls: list[ToolCallOut] | None = None,
) -> dict:  # fmt: skip
    elapsed = time.perf_counter_ns() - started
    timings = Timings(
        total_duration=elapsed, load_duration=0, prompt_eval_count=int(usage.get("prompt_tokens") or 0),
        prompt_eval_duration=0, eval_count=int(usage.get("completion_tokens") or 0), eval_duration=elapsed,
    )  # fmt: skip
    response = shape(content, calls, True, _done_reason(reason))
    return response.model_dump(exclude_none=True) | timings.model_dump()


async def remote_ollama_chat(
    call: CallContext, remote: RemoteModel, body: ChatRequest, conversation: Conversation, requested: str
) -> StreamingResponse | dict:
    payload = chat_payload(body, conversation)
    return await _serve(call, remote, payload, requested, body.stream, _chat_shape(body.model))


async def remote_ollama_generate(
    call: CallContext, remote: RemoteModel, body: GenerateRequest, requested: str
) -> StreamingResponse | dict:
    payload = generate_payload(body)
    return await _serve(call, remote, payload, requested, body.stream, _generate_shape(body.model))


async def _serve(
    call: CallContext,
    remote: RemoteModel,
    payload: dict[str, Any],
    requested: str,
    stream: bool,
    shape: Shape,
) -> StreamingResponse | dict:
    started = time.perf_counter_ns()
    if not stream:
        admission = await admit_remote(call, payload)
        remote.in_flight += 1
        prompt = completion = 0
        try:
            data = await remote.upstream().chat(requested, payload)
            prompt, completion = token_counts(upstream_usage(data))
        finally:
            remote.in_flight -= 1
            await admission.settle(prompt, completion)
        choice = (data.get("choices") or [{}])[0]
        answer = choice.get("message") or {}
        calls = _calls(answer.get("tool_calls") or []) or None
        usage = data.get("usage") or {}
        return _final(shape, started, usage, choice.get("finish_reason"), answer.get("content") or "", calls)
    admission, chunks = await open_stream(call, remote, payload, requested)
    return StreamingResponse(_lines(shape, started, chunks, remote, admission), media_type=NDJSON)


async def _lines(
    shape: Shape, started: int, chunks: Any, remote: RemoteModel, admission: Any
) -> AsyncIterator[str]:
    def line(content: str, calls: list[ToolCallOut] | None = None) -> str:
        return json.dumps(shape(content, calls, False, None).model_dump(exclude_none=True)) + "\n"

    usage: dict[str, Any] = {}
    reason = None
    calls: dict[int, dict[str, Any]] = {}  # OpenAI's streamed call pieces, by index, until the answer ends
    try:
        async for chunk in chunks:
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    yield line(delta["content"])
                for piece in delta.get("tool_calls") or []:
                    entry = calls.setdefault(
                        int(piece.get("index") or 0), {"function": {"name": "", "arguments": ""}}
                    )
                    function = piece.get("function") or {}
                    entry["function"]["name"] += function.get("name") or ""
                    entry["function"]["arguments"] += function.get("arguments") or ""
                reason = choice.get("finish_reason") or reason
        if calls:
            yield line("", _calls([calls[i] for i in sorted(calls)]))
        yield json.dumps(_final(shape, started, usage, reason)) + "\n"
    except UpstreamError as exc:  # too late for a status code: Ollama puts the error in the stream
        yield json.dumps({"error": upstream_api_error(exc).body.message}) + "\n"
    except Exception as exc:
        yield json.dumps({"error": str(exc) or "generation failed"}) + "\n"
    finally:
        prompt, completion = token_counts(upstream_usage({"usage": usage}))
        await release_stream(remote, chunks, admission, prompt, completion)
