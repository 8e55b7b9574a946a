"""POST /tokenize and POST /detokenize, in vLLM's shapes (also under /v1, where OpenAI clients point).

A prompt is tokenized as /v1/completions tokenizes it; messages go through the same conversation and chat
template as /v1/chat/completions, so `count` is the prompt_tokens a chat request with them is charged.
Only local models have a tokenizer here: a remote one is a 400. Both routes pass the caller's key, model
allow-list and request limits like any other call, but charge no tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Literal, NoReturn, TypeVar

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from backends.conversation import Conversation
from gateway.deps import CallContext, CallDep
from gateway.dispatch import dispatch
from gateway.errors import bad_request
from gateway.generation import chat_prompt, check_prompt_size, utf8_size
from gateway.openai_protocol import (
    ChatCompletionRequest,
    ChatMessageIn,
    NamedToolChoice,
    ToolDefinitionIn,
)
from gateway.registry import ManagedModel, ServedModel
from gateway.routing import RemoteModel
from gateway.tool_conversation import openai_conversation

router = APIRouter(tags=["tokenize"])
T = TypeVar("T")

# what only a chat (messages) request may carry
_CHAT_FIELDS = ("add_generation_prompt", "continue_final_message", "tools", "tool_choice")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as on /v1: unknown fields are a 400


class TokenizeRequest(_Request):
    """vLLM's TokenizeCompletionRequest and TokenizeChatRequest in one: `prompt` or `messages`."""

    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessageIn] | None = None
    add_special_tokens: bool | None = None  # unset: True for a prompt (BOS), False for messages (as vLLM)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[ToolDefinitionIn] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None  # each token's own text (a partial UTF-8 sequence as U+FFFD)


class DetokenizeRequest(_Request):
    model: str = Field(min_length=1)
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


def _check(body: TokenizeRequest) -> None:
    if body.prompt is not None and body.messages is not None:
        raise bad_request("Send either 'prompt' or 'messages', not both.", param="messages")
    if body.prompt is None and body.messages is None:
        raise bad_request("Missing required parameter: 'prompt' (or 'messages').", param="prompt")
    if body.prompt is not None:
        for name in _CHAT_FIELDS:
            if name in body.model_fields_set:
                raise bad_request(f"'{name}' goes with 'messages', not with 'prompt'.", param=name)
    elif not body.messages:
        raise bad_request("'messages' must not be empty.", param="messages")
    if body.add_generation_prompt and body.continue_final_message:
        raise bad_request(
            "'continue_final_message' and 'add_generation_prompt' cannot both be true.",
            param="continue_final_message",
        )


def _conversation(body: TokenizeRequest) -> Conversation:
    """The conversation exactly as /v1/chat/completions builds it from the same messages and tools."""
    chat = ChatCompletionRequest(
        model=body.model, messages=body.messages or [], tools=body.tools, tool_choice=body.tool_choice
    )
    return openai_conversation(chat)


def _chat_tokens(body: TokenizeRequest, served: ServedModel, conversation: Conversation) -> list[int]:
    prompt = chat_prompt(served, conversation, add_generation_prompt=body.add_generation_prompt)
    text = prompt.text
    if body.continue_final_message:
        # the final message left open, as vLLM does: the render cut after that message's own text
        final = conversation.messages[-1].text
        end = text.rfind(final) if final else -1
        if end < 0:
            raise bad_request(
                "'continue_final_message' needs a final message with text content.", param="messages"
            )
        text = text[: end + len(final)]
    elif not body.add_special_tokens:
        return prompt.token_ids
    return served.backend.tokenize(text, add_special_tokens=bool(body.add_special_tokens))


def _tokenize(
    body: TokenizeRequest, served: ServedModel, conversation: Conversation | None
) -> TokenizeResponse:
    backend = served.backend
    if conversation is not None:
        tokens = _chat_tokens(body, served, conversation)
    else:
        assert body.prompt is not None
        check_prompt_size(served, utf8_size(body.prompt), param="prompt")
        add_special = True if body.add_special_tokens is None else body.add_special_tokens
        tokens = backend.tokenize(body.prompt, add_special_tokens=add_special)
    strs = [backend.detokenize([t]) for t in tokens] if body.return_token_strs else None
    return TokenizeResponse(
        count=len(tokens), max_model_len=backend.context_length, tokens=tokens, token_strs=strs
    )


def _detokenize(body: DetokenizeRequest, served: ServedModel) -> DetokenizeResponse:
    vocab = served.backend.vocab_size
    bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise bad_request(
            f"Token id {str(bad)[:24]} in 'tokens' is not a token of this model: ids are in [0, {vocab}).",
            param="tokens",
        )
    return DetokenizeResponse(prompt=served.backend.detokenize(body.tokens))


async def _on_model(call: CallContext, model: ManagedModel, work: Callable[[ServedModel], T]) -> T:
    """`work` on the loaded model, off the event loop; admitted like any request (rpm, parallel), but no
    tokens are reserved or charged: nothing is generated."""
    admission = await call.access.admit(call.principal, model.spec.name, 0)
    call.request.state.ratelimit_headers = admission.headers
    try:
        lease = await call.models.acquire(model)
        try:
            running = asyncio.ensure_future(asyncio.to_thread(work, lease.served))
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                # a thread cannot be stopped: the model stays held until it is done with it
                with contextlib.suppress(Exception):
                    await running
                raise
        finally:
            lease.release()
    finally:
        await admission.settle(0, 0)


async def _refuse_remote(remote: RemoteModel, requested: str) -> NoReturn:
    raise bad_request(
        f"model '{requested}' is served by a remote upstream, whose tokenizer tandem does not have: "
        "/tokenize and /detokenize serve local models only.",
        param="model",
        code="unsupported_model",
    )


@router.post("/tokenize", response_model=None)
@router.post("/v1/tokenize", response_model=None, include_in_schema=False)
async def tokenize(body: TokenizeRequest, call: CallDep) -> dict:
    _check(body)
    conversation = None
    if body.messages is not None:
        conversation = await asyncio.to_thread(_conversation, body)  # tool schemas compile: seconds at first

    async def serve(model: ManagedModel) -> dict:
        response = await _on_model(call, model, lambda served: _tokenize(body, served, conversation))
        return response.model_dump(exclude_none=True)

    return await dispatch(call, body.model, serve, _refuse_remote)


@router.post("/detokenize", response_model=None)
@router.post("/v1/detokenize", response_model=None, include_in_schema=False)
async def detokenize(body: DetokenizeRequest, call: CallDep) -> DetokenizeResponse:
    async def serve(model: ManagedModel) -> DetokenizeResponse:
        return await _on_model(call, model, lambda served: _detokenize(body, served))

    return await dispatch(call, body.model, serve, _refuse_remote)
