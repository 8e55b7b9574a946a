"""Faults in the paged engine: one request's failure stays that request's; an unattributable one fails the
backend at once (every stream ends with an error, new requests are refused), never a silent hang.

The faults are real code paths: seeds the generator cannot take, and a model runner whose run raises.
Every wait is bounded (HANG_S) so that a regression shows up as a failure, not a stuck suite.
"""

from __future__ import annotations

import asyncio

import pytest

torch = pytest.importorskip("torch")

from backends.base import (  # noqa: E402
    BackendState,
    BackendUnavailableError,
    FinishReason,
    GenerationChunk,
    GenerationFailedError,
    GenerationRequest,
    SamplingParams,
    StructuredOutput,
)
from backends.paged.backend import PagedBackend  # noqa: E402
from backends.paged.config import EngineConfig  # noqa: E402
from backends.paged.engine import LLMEngine  # noqa: E402
from backends.structured import GrammarMatcher  # noqa: E402

CONFIG = EngineConfig(num_kv_blocks=64, block_size=8, dtype="float32", device="cpu")
HANG_S = 60  # far beyond what any of these takes: reaching it means a request was left waiting
PROMPT = [5, 17, 42, 99, 7, 300, 12]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tiny_llama):
    return tiny_llama.hf_dir


def _request(request_id: str, max_tokens: int = 8, **sampling) -> GenerationRequest:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, **sampling)
    return GenerationRequest(request_id, PROMPT, params)


async def _collect(backend: PagedBackend, request: GenerationRequest) -> list[GenerationChunk]:
    async def run() -> list[GenerationChunk]:
        return [chunk async for chunk in backend.generate(request)]

    return await asyncio.wait_for(run(), HANG_S)


def test_any_int_seed_samples_and_leaves_the_engine_serving(tiny_dir):
    """The regression: a seed >= 2^64 (2^64 - 1 plus choice index 1) raised in torch's generator on the
    engine thread, which died; every later request hung."""

    async def main() -> None:
        backend = PagedBackend.load(tiny_dir, CONFIG, "tiny")
        try:
            seeds = [2**64, 2**70, -1, -(2**63), 2**63, 2**64 - 1]
            results = await asyncio.gather(
                *(_collect(backend, _request(f"s{i}", seed=s)) for i, s in enumerate(seeds))
            )
            for chunks in results:
                assert sum(len(c.token_ids) for c in chunks) == 8
                assert chunks[-1].finish_reason is FinishReason.LENGTH
            # seeds are taken mod 2^64, as torch maps negatives: -1 and 2^64 - 1 draw the same tokens
            same = await asyncio.gather(
                _collect(backend, _request("a", seed=-1)), _collect(backend, _request("b", seed=2**64 - 1))
            )
            assert [c.token_ids for c in same[0]] == [c.token_ids for c in same[1]]
            after = await _collect(backend, _request("after", temperature=0.0))
            assert after[-1].finish_reason is FinishReason.LENGTH
            assert backend.health.state is BackendState.READY
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_an_admission_fault_fails_only_that_request(tiny_dir, monkeypatch):
    async def main() -> None:
        backend = PagedBackend.load(tiny_dir, CONFIG, "tiny")
        runner = backend.engine.runner
        make_generator = runner.make_generator

        def failing(seed: int) -> torch.Generator:
            if seed == 13:
                raise RuntimeError("injected admission fault")
            return make_generator(seed)

        monkeypatch.setattr(runner, "make_generator", failing)
        try:
            long = asyncio.create_task(_collect(backend, _request("long", max_tokens=40, seed=1)))
            with pytest.raises(GenerationFailedError, match="injected admission fault"):
                await _collect(backend, _request("bad", seed=13))
            chunks = await long
            assert sum(len(c.token_ids) for c in chunks) == 40
            assert backend.health.state is BackendState.READY
            assert (await _collect(backend, _request("next", seed=2)))[
                -1
            ].finish_reason is FinishReason.LENGTH
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_a_failed_step_fails_every_request_and_the_backend(tiny_dir, monkeypatch):
    async def main() -> None:
        backend = PagedBackend.load(tiny_dir, CONFIG, "tiny")
        runner = backend.engine.runner
        execute = runner.execute
        armed = asyncio.Event()
        faults = []

        def faulty(inputs):
            if armed.is_set() and not faults:
                faults.append(inputs)
                raise RuntimeError("injected step fault")
            return execute(inputs)

        monkeypatch.setattr(runner, "execute", faulty)
        try:
            streams = [backend.generate(_request(f"r{i}", max_tokens=400, temperature=0.0)) for i in range(3)]
            for stream in streams:  # all three are running
                assert (await asyncio.wait_for(anext(stream), HANG_S)).token_ids
            armed.set()

            async def drain(stream) -> None:
                async for _ in stream:
                    pass

            for stream in streams:
                with pytest.raises(BackendUnavailableError, match="injected step fault"):
                    await asyncio.wait_for(drain(stream), HANG_S)
            assert faults, "the fault was injected"
            health = backend.health
            assert health.state is BackendState.FAILED and "injected step fault" in (health.error or "")
            with pytest.raises(BackendUnavailableError, match="reloaded"):
                backend.generate(_request("refused"))
        finally:
            await asyncio.wait_for(backend.aclose(), HANG_S)

    asyncio.run(main())


class _BrokenGrammar(GrammarMatcher):
    __slots__ = ()

    def accept(self, token_id: int) -> bool:
        raise RuntimeError("injected grammar fault")


def test_a_fault_the_engine_pins_on_one_sequence_ends_only_that_one(tiny_dir):
    """A structured request whose grammar raises: the engine fails that request and serves on."""
    engine = LLMEngine.from_pretrained(tiny_dir, CONFIG, "tiny")
    engine.add_request(_request("plain", max_tokens=12, temperature=0.0))
    engine.add_request(
        _request("json", max_tokens=12, temperature=0.0, structured=StructuredOutput("json_object"))
    )
    seq = engine._requests["json"]
    seq.grammar = _BrokenGrammar(seq.grammar._matcher, seq.grammar.vocab_size)
    outputs: dict[str, list] = {"plain": [], "json": []}
    while engine.has_unfinished():
        for out in engine.step():
            outputs[out.request_id].append(out)
    (failed,) = outputs["json"]
    assert failed.finish_reason is FinishReason.ABORT and "injected grammar fault" in (failed.error or "")
    assert sum(len(o.new_token_ids) for o in outputs["plain"]) == 12
    assert all(o.error is None for o in outputs["plain"])
    engine.check_invariants()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
