"""PagedBackend: the engine thread, streaming, stop strings, aborts, concurrency, shutdown."""

from __future__ import annotations

import asyncio
import gc
import random
import time

import pytest

torch = pytest.importorskip("torch")

from backends.base import (  # noqa: E402
    Backend,
    BackendError,
    BackendUnavailableError,
    ChatMessage,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    QueueFullError,
    SamplingParams,
)
from backends.paged.backend import PagedBackend  # noqa: E402
from backends.paged.config import EngineConfig  # noqa: E402
from backends.paged.engine import LLMEngine  # noqa: E402

CONFIG = EngineConfig(num_kv_blocks=64, block_size=8, dtype="float32", device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)


def _prompt(seed: int, n: int = 10) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(n)]


async def _collect(backend: PagedBackend, request: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in backend.generate(request)]


def _tokens(chunks: list[GenerationChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


async def _until_idle(backend: PagedBackend, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while backend._engine.has_unfinished():
        assert time.monotonic() < deadline, "the engine never went idle"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.02)  # let the engine thread get back to its wait


def _assert_all_blocks_free(backend: PagedBackend) -> None:
    bm = backend._engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks
    backend._engine.check_invariants()


def test_load_and_protocol(tiny_llama):
    async def main() -> None:
        backend = PagedBackend.load(tiny_llama.hf_dir, CONFIG, "tiny")
        try:
            assert isinstance(backend, Backend)
            assert backend.kind == "paged" and not backend.capabilities.embeddings
            assert backend.capabilities.logprobs and backend.capabilities.structured_output
            assert backend.context_length == 64 * 8  # capped by the KV pool
            text = backend.apply_chat_template([ChatMessage("user", "hello")])
            assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
            ids = backend.tokenize(text, add_special_tokens=False)
            assert ids[0] == 1022 and 1023 in ids  # special-token text became the special tokens
            assert backend.tokenize(text) == ids  # this model adds no BOS
            assert backend.vocab_size == tiny_llama.vocab_size
            stats = backend.stats()
            assert stats.running == stats.waiting == 0 and stats.engine is not None
            assert stats.load_seconds is not None and stats.load_seconds > 0
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_streams_text_and_finishes_once(tiny_llama):
    engine = LLMEngine.from_pretrained(tiny_llama.hf_dir, CONFIG)
    prompt = _prompt(1)
    expected = LLMEngine.from_pretrained(tiny_llama.hf_dir, CONFIG).generate(
        [GenerationRequest("ref", prompt, _greedy(12))]
    )["ref"]

    async def main() -> None:
        backend = PagedBackend(engine, engine.tokenizer, "tiny")
        try:
            chunks = await _collect(backend, GenerationRequest("a", prompt, _greedy(12, logprobs=2)))
        finally:
            await backend.aclose()
        assert [c.finish_reason for c in chunks] == [None] * (len(chunks) - 1) + [FinishReason.LENGTH]
        ids = [t for c in chunks for t in c.token_ids]
        assert ids == expected
        assert "".join(c.text for c in chunks) == engine.tokenizer.decode(ids)
        logprobs = [lp for c in chunks for lp in (c.logprobs or [])]
        assert [lp.token_id for lp in logprobs] == ids
        assert all(len(lp.top) == 2 and lp.top[0][0] == lp.token_id for lp in logprobs)
        assert logprobs[0].token == engine.tokenizer.token_text(ids[0])

    asyncio.run(main())


def test_stop_string_cuts_text_and_aborts(tiny_llama):
    engine = LLMEngine.from_pretrained(tiny_llama.hf_dir, CONFIG)

    async def main() -> None:
        backend = PagedBackend(engine, engine.tokenizer, "tiny")
        try:
            prompt = _prompt(2)
            full = "".join(
                c.text for c in await _collect(backend, GenerationRequest("a", prompt, _greedy(40)))
            )
            stop = full[10:13]
            assert stop.strip() and full.find(stop) >= 1
            chunks = await _collect(backend, GenerationRequest("b", prompt, _greedy(40, stop=(stop,))))
            assert "".join(c.text for c in chunks) == full[: full.find(stop)]
            assert chunks[-1].finish_reason is FinishReason.STOP
            assert sum(len(c.token_ids) for c in chunks) < 40
            await _until_idle(backend)
            _assert_all_blocks_free(backend)
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_early_close_and_cancellation_abort(tiny_llama):
    engine = LLMEngine.from_pretrained(tiny_llama.hf_dir, CONFIG)

    async def main() -> None:
        backend = PagedBackend(engine, engine.tokenizer, "tiny")
        try:
            stream = backend.generate(GenerationRequest("closed", _prompt(3), _greedy(400)))
            assert stream.stats().waiting + stream.stats().running <= 1
            first = await anext(stream)
            await anext(stream)
            assert first.finish_reason is None
            await stream.aclose()

            async def consume() -> None:
                async for _ in backend.generate(GenerationRequest("cancelled", _prompt(4), _greedy(400))):
                    pass

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await _until_idle(backend)
            assert engine.stats.num_generation_tokens < 400
            _assert_all_blocks_free(backend)
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_concurrent_requests_complete_with_batch_identical_outputs(tiny_llama):
    prompts = [_prompt(10 + i, 3 + 7 * i) for i in range(6)]
    reference = LLMEngine.from_pretrained(tiny_llama.hf_dir, CONFIG)
    expected = [reference.generate([GenerationRequest("r", p, _greedy(10))])["r"] for p in prompts]
    engine = LLMEngine.from_pretrained(tiny_llama.hf_dir, CONFIG.model_copy(update={"num_kv_blocks": 12}))

    async def main() -> None:
        backend = PagedBackend(engine, engine.tokenizer, "tiny")
        try:
            results = await asyncio.gather(
                *(
                    _collect(backend, GenerationRequest(f"c{i}", p, _greedy(10)))
                    for i, p in enumerate(prompts)
                )
            )
            await _until_idle(backend)
            _assert_all_blocks_free(backend)
        finally:
            await backend.aclose()
        for chunks, want in zip(results, expected, strict=True):
            assert [t for c in chunks for t in c.token_ids] == want
            assert chunks[-1].finish_reason is FinishReason.LENGTH
        assert engine.stats.num_preemptions > 0  # 12 blocks of 8 cannot hold all six at once

    asyncio.run(main())


def test_aclose_aborts_in_flight_and_refuses_new_work(tiny_llama):
    engine = LLMEngine.from_pretrained(tiny_llama.hf_dir, CONFIG)

    async def main() -> None:
        backend = PagedBackend(engine, engine.tokenizer, "tiny")
        stream = backend.generate(GenerationRequest("long", _prompt(5), _greedy(400)))
        await anext(stream)
        await backend.aclose()
        rest = [chunk async for chunk in stream]
        assert rest and rest[-1].finish_reason is FinishReason.ABORT
        assert not engine.has_unfinished()
        with pytest.raises(BackendUnavailableError):
            backend.generate(GenerationRequest("late", _prompt(6), _greedy(4)))
        await backend.aclose()  # idempotent

    asyncio.run(main())


def test_rejected_request_raises_before_streaming(tiny_llama):
    engine = LLMEngine.from_pretrained(tiny_llama.hf_dir, CONFIG)

    async def main() -> None:
        backend = PagedBackend(engine, engine.tokenizer, "tiny")
        try:
            with pytest.raises(BackendError):  # at admission, before any chunk
                backend.generate(GenerationRequest("big", [1] * 600, _greedy(4)))
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_full_queue_refuses_at_admission(tiny_llama):
    config = CONFIG.model_copy(update={"max_waiting_requests": 2})
    engine = LLMEngine.from_pretrained(tiny_llama.hf_dir, config)

    async def main() -> None:
        backend = PagedBackend(engine, engine.tokenizer, "tiny")
        try:
            with backend._cond:  # hold the engine thread at its drain (the lock is re-entrant)
                first = backend.generate(GenerationRequest("q1", _prompt(7), _greedy(3)))
                second = backend.generate(GenerationRequest("q2", _prompt(8), _greedy(3)))
                with pytest.raises(QueueFullError):
                    backend.generate(GenerationRequest("q3", _prompt(9), _greedy(3)))
                with pytest.raises(BackendError):
                    backend.generate(GenerationRequest("q1", _prompt(9), _greedy(3)))
            assert len(_tokens([c async for c in first])) == 3
            assert len(_tokens([c async for c in second])) == 3
            await _until_idle(backend)
            metrics = backend.stats().engine
            assert metrics is not None and metrics.step_batch_size.count > 0
            assert metrics.request_decode_time_s.count == 2 and metrics.request_queue_time_s.count == 2
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_dropped_stream_is_aborted(tiny_llama):
    engine = LLMEngine.from_pretrained(tiny_llama.hf_dir, CONFIG)

    async def main() -> None:
        backend = PagedBackend(engine, engine.tokenizer, "tiny")
        try:
            stream = backend.generate(GenerationRequest("dropped", _prompt(11), _greedy(400)))
            await anext(stream)
            del stream
            gc.collect()
            await _until_idle(backend)
            assert engine.stats.num_generation_tokens < 400
            _assert_all_blocks_free(backend)
        finally:
            await backend.aclose()

    asyncio.run(main())
