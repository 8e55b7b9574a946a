"""Faults in the llama.cpp worker: a request that raises fails alone (500, no deployment cooldown); one
that kills the worker fails the backend, and every admitted request with it, at once.

Real llama.cpp on the tiny GGUF; the fault is the engine's per-sequence sampling step raising. Every wait is
bounded (HANG_S) so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import asyncio

import pytest

from backends.base import (
    BackendState,
    BackendUnavailableError,
    FinishReason,
    GenerationChunk,
    GenerationFailedError,
    GenerationRequest,
    SamplingParams,
)
from backends.llamacpp.backend import LlamaCppBackend

HANG_S = 60


class _WorkerKilled(BaseException):
    """Escapes `except Exception`, as a fault no request can be blamed for does."""


def _request(request_id: str, max_tokens: int = 6, **sampling) -> GenerationRequest:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, **sampling)
    return GenerationRequest(request_id, [1, 15, 27, 80, 3], params)


async def _collect(stream) -> list[GenerationChunk]:
    async def run() -> list[GenerationChunk]:
        return [chunk async for chunk in stream]

    return await asyncio.wait_for(run(), HANG_S)


def _load(tiny_llama) -> LlamaCppBackend:
    return LlamaCppBackend.load(
        tiny_llama.gguf_path, model_name="tiny", context_length=256, max_queued=8, threads=1
    )


def test_negative_and_huge_seeds_sample(tiny_llama):
    """The regression: numpy refuses a negative seed; the worker answered 503, and the router cooled the
    deployment down."""

    async def main() -> None:
        backend = _load(tiny_llama)
        try:
            for seed in (-1, -(2**63), 2**64 + 5):
                chunks = await _collect(backend.generate(_request(f"s{seed}", seed=seed)))
                assert chunks[-1].finish_reason is FinishReason.LENGTH
            a = await _collect(backend.generate(_request("a", seed=-1)))
            b = await _collect(backend.generate(_request("b", seed=2**64 - 1)))
            assert [c.token_ids for c in a] == [c.token_ids for c in b]  # mod 2^64, as the paged engine
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_a_request_that_raises_fails_alone(tiny_llama, monkeypatch):
    async def main() -> None:
        backend = _load(tiny_llama)
        advance = backend.engine._advance

        def faulty(seq, logits):
            if seq.request.request_id == "bad":
                raise RuntimeError("injected request fault")
            return advance(seq, logits)

        monkeypatch.setattr(backend.engine, "_advance", faulty)
        try:
            bad = backend.generate(_request("bad"))
            good = backend.generate(_request("good"))  # in the same batch as the bad one
            with pytest.raises(GenerationFailedError, match="injected request fault"):
                await _collect(bad)
            assert (await _collect(good))[-1].finish_reason is FinishReason.LENGTH
            assert backend.health.state is BackendState.READY
            assert (await _collect(backend.generate(_request("after"))))[
                -1
            ].finish_reason is FinishReason.LENGTH
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_a_dead_worker_fails_the_backend_and_its_queue(tiny_llama, monkeypatch):
    async def main() -> None:
        backend = _load(tiny_llama)
        advance = backend.engine._advance

        def faulty(seq, logits):
            if seq.request.request_id == "fatal":
                raise _WorkerKilled("injected worker fault")
            return advance(seq, logits)

        monkeypatch.setattr(backend.engine, "_advance", faulty)
        try:
            streams = [backend.generate(_request(name)) for name in ("fatal", "queued-1", "queued-2")]
            for stream in streams:
                with pytest.raises(BackendUnavailableError, match="injected worker fault"):
                    await _collect(stream)
            health = backend.health
            assert health.state is BackendState.FAILED and "injected worker fault" in (health.error or "")
            with pytest.raises(BackendUnavailableError, match="reloaded"):
                backend.generate(_request("refused"))
        finally:
            await asyncio.wait_for(backend.aclose(), HANG_S)

    asyncio.run(main())
