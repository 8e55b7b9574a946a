"""Embeddings: POST /v1/embeddings (OpenAI), POST /api/embed and the legacy POST /api/embeddings (Ollama)."""

from __future__ import annotations

import asyncio
import base64
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from backends.base import Backend
from gateway.deps import CallContext, CallDep
from gateway.dispatch import dispatch
from gateway.durations import parse_keep_alive
from gateway.errors import bad_request
from gateway.generation import BYTES_PER_TOKEN, utf8_size
from gateway.ollama_protocol import (
    EmbedRequest,
    EmbedResponse,
    LegacyEmbeddingsRequest,
    LegacyEmbeddingsResponse,
)
from gateway.openai_protocol import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from gateway.registry import DEFAULT_KEEP_ALIVE, Lease, ManagedModel
from gateway.remote_serving import remote_embedding
from gateway.routes.ollama_models import resolve_ollama_model
from gateway.routing import RemoteModel

router = APIRouter(tags=["embeddings"])


def _shorten(vector: list[float], dimensions: int | None) -> list[float]:
    """`dimensions`: keep the first N components and renormalize, as OpenAI's text-embedding-3 does."""
    if dimensions is None or dimensions >= len(vector):
        return vector
    import numpy as np  # not at import: `tandem serve` need not load numpy before a model does

    head = np.asarray(vector[:dimensions], dtype=np.float32)
    norm = float(np.linalg.norm(head))
    return (head / norm if norm > 0 else head).tolist()


async def _embed(
    call: CallContext,
    model: ManagedModel,
    texts_or_ids: list[str] | list[list[int]],
    truncate: bool,
    keep_alive: float | object | None = DEFAULT_KEEP_ALIVE,
) -> tuple[list[list[float]], int, Lease]:
    lease = await call.models.acquire(model, keep_alive)
    try:
        backend = lease.served.backend
        if lease.served.adapter is not None:  # the embedder runs the base weights alone: refuse, not ignore
            raise bad_request(
                f"model '{model.spec.name}' is a LoRA adapter: embeddings with an adapter are not supported",
                param="model",
                code="unsupported_model",
            )
        if not backend.capabilities.embeddings:
            raise bad_request(
                f"model '{model.spec.name}' (backend {backend.kind}) does not support embeddings",
                param="model",
                code="unsupported_model",
            )
        # tokenizing is CPU work: off the event loop, like chat prompts
        inputs = await asyncio.to_thread(_token_inputs, backend, texts_or_ids, truncate)
        tokens = sum(len(ids) for ids in inputs)
        admission = await call.access.admit(call.principal, model.spec.name, tokens)
        call.request.state.ratelimit_headers = admission.headers
        try:
            vectors = await backend.embed(inputs)
        finally:
            await admission.settle(tokens, 0)
        return vectors, tokens, lease
    finally:
        lease.release()


def _token_inputs(
    backend: Backend, texts_or_ids: list[str] | list[list[int]], truncate: bool
) -> list[list[int]]:
    context = backend.context_length
    inputs = []
    for item in texts_or_ids:
        if isinstance(item, str):
            if not item:
                raise bad_request("input must not contain empty strings", param="input")
            limit = (
                context * BYTES_PER_TOKEN
            )  # no text past it fits the context: refuse or cut before tokenizing
            if utf8_size(item) > limit:
                if not truncate:
                    raise bad_request(
                        f"input of {utf8_size(item)} bytes is more than the context length {context} "
                        f"can hold (at most {BYTES_PER_TOKEN} bytes a token)",
                        param="input",
                        code="context_length_exceeded",
                    )
                item = item.encode("utf-8", errors="surrogatepass")[:limit].decode("utf-8", errors="ignore")
            ids = backend.tokenize(item, add_special_tokens=True)
        else:
            if not item or any(not 0 <= t < backend.vocab_size for t in item):
                raise bad_request(f"token ids must be in [0, {backend.vocab_size})", param="input")
            ids = item
        if len(ids) > context:
            if not truncate:
                raise bad_request(
                    f"input of {len(ids)} tokens exceeds the context length {context}",
                    param="input",
                    code="context_length_exceeded",
                )
            ids = ids[:context]
        inputs.append(ids)
    return inputs


def _openai_inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[str] | list[list[int]]:
    if isinstance(value, str):
        return [value]
    if not value:
        raise bad_request("input must not be empty", param="input")
    ints = [v for v in value if isinstance(v, int)]
    if len(ints) == len(value):
        return [ints]
    texts = [v for v in value if isinstance(v, str)]
    if len(texts) == len(value):
        return texts
    return [v for v in value if isinstance(v, list)]  # pydantic admits no mixed lists


@router.post("/v1/embeddings", response_model=None)
async def openai_embeddings(body: EmbeddingRequest, call: CallDep) -> EmbeddingList | JSONResponse:
    async def on_upstream(remote: RemoteModel, requested: str) -> JSONResponse:
        return await remote_embedding(call, remote, body, requested)

    return await dispatch(call, body.model, lambda model: _serve_openai(call, body, model), on_upstream)


async def _serve_openai(call: CallContext, body: EmbeddingRequest, model: ManagedModel) -> EmbeddingList:
    import numpy as np

    vectors, tokens, _ = await _embed(call, model, _openai_inputs(body.input), truncate=False)
    data = []
    for index, vector in enumerate(vectors):
        shortened = _shorten(vector, body.dimensions)
        if body.encoding_format == "base64":
            encoded = base64.b64encode(np.asarray(shortened, dtype="<f4").tobytes()).decode()
            data.append(Embedding(index=index, embedding=encoded))
        else:
            data.append(Embedding(index=index, embedding=shortened))
    usage = EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    return EmbeddingList(data=data, model=call.request.state.tandem_model, usage=usage)


def _keep_alive(value: str | int | float | None) -> float | object | None:
    if value is None:
        return DEFAULT_KEEP_ALIVE
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


@router.post("/api/embed")
async def ollama_embed(body: EmbedRequest, request: Request, call: CallDep) -> EmbedResponse:
    started = time.perf_counter_ns()
    model = resolve_ollama_model(call.models, body.model, request)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise bad_request("input must not be empty")
    vectors, tokens, lease = await _embed(call, model, texts, body.truncate, _keep_alive(body.keep_alive))
    return EmbedResponse(
        model=body.model,
        embeddings=[_shorten(v, body.dimensions) for v in vectors],
        total_duration=time.perf_counter_ns() - started,
        load_duration=int(lease.load_seconds * 1e9),
        prompt_eval_count=tokens,
    )


@router.post("/api/embeddings")
async def ollama_legacy_embeddings(
    body: LegacyEmbeddingsRequest, request: Request, call: CallDep
) -> LegacyEmbeddingsResponse:
    model = resolve_ollama_model(call.models, body.model, request)
    if not body.prompt:  # Ollama answers an empty prompt with an empty embedding
        return LegacyEmbeddingsResponse(embedding=[])
    vectors, _, _ = await _embed(call, model, [body.prompt], True, _keep_alive(body.keep_alive))
    return LegacyEmbeddingsResponse(embedding=vectors[0])
