"""Embedding requests that arrive together share llama.cpp decodes (backends/llamacpp/embedding_queue.py)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from backends.llamacpp.backend import LlamaCppBackend

INPUTS = [[1, 15, 27, 80, 3], [1, 99], [1, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 42], [1, 300, 301]]


@pytest.fixture(scope="module")
def backend(tiny_llama):
    backend = LlamaCppBackend.load(tiny_llama.gguf_path, model_name="m", context_length=256, max_queued=4,
                                   threads=1)  # fmt: skip
    yield backend
    asyncio.run(backend.aclose())


def _alone(backend: LlamaCppBackend) -> list[np.ndarray]:
    return [np.array(asyncio.run(backend.embed([ids]))[0]) for ids in INPUTS]


def test_one_requests_inputs_are_one_decode_and_equal_each_alone(backend):
    alone = _alone(backend)
    decodes = backend._embedder.decodes
    together = asyncio.run(backend.embed(INPUTS))
    assert backend._embedder.decodes == decodes + 1
    for vector, expected in zip(together, alone, strict=True):
        assert np.allclose(vector, expected, atol=1e-4)
    assert not np.allclose(alone[0], alone[1], atol=1e-2)  # the inputs do differ


def test_requests_that_arrive_together_share_a_drain(backend):
    alone = _alone(backend)
    gate = threading.Event()
    backend._embedding_thread.submit(gate.wait)  # the embedding thread is busy while all four arrive

    async def four() -> list[list[list[float]]]:
        requests = [asyncio.ensure_future(backend.embed([ids])) for ids in INPUTS]
        gone = asyncio.ensure_future(backend.embed([[1, 2, 3]]))  # its client leaves before its turn
        await asyncio.sleep(0.05)
        gone.cancel()
        drains, decodes = backend.embeddings.drains, backend._embedder.decodes
        gate.set()
        results = await asyncio.gather(*requests)
        assert backend.embeddings.drains == drains + 1
        assert backend._embedder.decodes == decodes + 1  # one decode for the four, none for the fifth
        return results

    for (vector,), expected in zip(asyncio.run(four()), alone, strict=True):
        assert np.allclose(vector, expected, atol=1e-4)
