"""Ollama /api/chat served by a remote (OpenAI-compatible) upstream: the request translated into OpenAI's
chat request, the answer back into Ollama's shapes, streaming or not.

The conversation is the neutral one the local path renders (gateway.tool_conversation), so tool calls,
tool results (matched to their calls) and images travel as they do there.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from backends.conversation import Conversation, ImagePart, Message, TextPart
from backends.remote.upstream import UpstreamError
from backends.template_inputs import template_tools
from gateway.deps import CallContext
from gateway.errors import bad_request, upstream_api_error
from gateway.ollama_protocol import (
    AssistantMessage,
    ChatRequest,
    ChatResponse,
    FunctionCallOut,
    OllamaOptions,
    Timings,
    ToolCallOut,
    timestamp,
)
from gateway.remote_serving import admit_remote
from gateway.routing import RemoteModel

NDJSON = "application/x-ndjson"
# base64 openings of the image formats Ollama clients send (Ollama's images carry no MIME type)
_IMAGE_TYPES = (
    ("iVBOR", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)


def _image_url(image: ImagePart) -> str:
    if image.url.startswith(("data:", "http://", "https://")):
        return image.url
    mime = next((mime for prefix, mime in _IMAGE_TYPES if image.url.startswith(prefix)), "image/png")
    return f"data:{mime};base64,{image.url}"


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role.value}
    if message.images:
        out["content"] = [
            {"type": "text", "text": p.text}
            if isinstance(p, TextPart)
            else {"type": "image_url", "image_url": {"url": _image_url(p)}}
            for p in message.content
        ]
    else:
        out["content"] = message.text if message.text or not message.tool_calls else None
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


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


def chat_payload(body: ChatRequest, conversation: Conversation) -> dict[str, Any]:
    if body.think is not None:
        raise bad_request(f"model '{body.model}' is served by a remote upstream: 'think' is not passed on")
    payload: dict[str, Any] = {
        "messages": [_message(m) for m in conversation.messages],
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


def _final(
    model: str, started: int, usage: dict[str, Any], reason: str | None, message: AssistantMessage
) -> dict:
    elapsed = time.perf_counter_ns() - started
    timings = Timings(
        total_duration=elapsed, load_duration=0, prompt_eval_count=int(usage.get("prompt_tokens") or 0),
        prompt_eval_duration=0, eval_count=int(usage.get("completion_tokens") or 0), eval_duration=elapsed,
    )  # fmt: skip
    response = ChatResponse(model=model, created_at=timestamp(), message=message, done=True,
                            done_reason=_done_reason(reason))  # fmt: skip
    return response.model_dump(exclude_none=True) | timings.model_dump()


def _usage(data: dict[str, Any]) -> tuple[int, int]:
    usage = data.get("usage") or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


async def remote_ollama_chat(
    call: CallContext, remote: RemoteModel, body: ChatRequest, conversation: Conversation, requested: str
) -> StreamingResponse | dict:
    payload = chat_payload(body, conversation)
    started = time.perf_counter_ns()
    if not body.stream:
        admission = await admit_remote(call, payload)
        remote.in_flight += 1
        prompt = completion = 0
        try:
            data = await remote.upstream().chat(requested, payload)
            prompt, completion = _usage(data)
        finally:
            remote.in_flight -= 1
            await admission.settle(prompt, completion)
        choice = (data.get("choices") or [{}])[0]
        answer = choice.get("message") or {}
        message = AssistantMessage(content=answer.get("content") or "",
                                   tool_calls=_calls(answer.get("tool_calls") or []) or None)  # fmt: skip
        return _final(body.model, started, data.get("usage") or {}, choice.get("finish_reason"), message)
    payload = {**payload, "stream_options": {"include_usage": True}}
    admission = await admit_remote(call, payload)
    remote.in_flight += 1
    try:
        chunks = await remote.upstream().chat_stream(requested, payload)
    except BaseException:
        remote.in_flight -= 1
        await admission.settle(0, 0)
        raise
    return StreamingResponse(_lines(body.model, started, chunks, remote, admission), media_type=NDJSON)


async def _lines(
    model: str, started: int, chunks: Any, remote: RemoteModel, admission: Any
) -> AsyncIterator[str]:
    def line(content: str, calls: list[ToolCallOut] | None = None) -> str:
        message = AssistantMessage(content=content, tool_calls=calls)
        piece = ChatResponse(model=model, created_at=timestamp(), message=message, done=False)
        return json.dumps(piece.model_dump(exclude_none=True)) + "\n"

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
        yield json.dumps(_final(model, started, usage, reason, AssistantMessage(content=""))) + "\n"
    except UpstreamError as exc:  # too late for a status code: Ollama puts the error in the stream
        yield json.dumps({"error": upstream_api_error(exc).body.message}) + "\n"
    except Exception as exc:
        yield json.dumps({"error": str(exc) or "generation failed"}) + "\n"
    finally:
        remote.in_flight -= 1
        close = getattr(chunks, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):  # the upstream's connection is going away either way
                await close()
        prompt, completion = _usage({"usage": usage})
        await admission.settle(prompt, completion)
