"""The dev backend batches: up to `parallel` sequences in one llama.cpp context, decoded together.

Real llama.cpp, on the random-weight tiny model and the real SmolLM2. Batched outputs are compared with the
same requests run one at a time on a backend of the same configuration; steps, cells and prompt tokens are
read from the engine's counters (never from timing). Every wait is bounded (HANG_S).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import jsonschema
import pytest

from backends.base import (
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    RenderOptions,
    SamplingParams,
    StructuredOutput,
)
from backends.conversation import Conversation, Message, Role, ToolChoice, ToolChoiceKind, ToolDefinition
from backends.llamacpp.backend import LlamaCppBackend
from backends.llamacpp.engine import PREFILL_CHUNK
from backends.tool_forced import forced_call_output

HANG_S = 120
PARALLEL = 8


@dataclass
class Output:
    token_ids: list[int]
    text: str
    finish: FinishReason | None
    logprobs: list[float]


async def _collect(stream, on_chunk: Callable[[GenerationChunk], Awaitable[None]] | None = None) -> Output:
    async def run() -> Output:
        out = Output([], "", None, [])
        async for chunk in stream:
            out.token_ids += chunk.token_ids
            out.text += chunk.text
            out.finish = chunk.finish_reason
            out.logprobs += [lp.logprob for lp in chunk.logprobs or ()]
            if on_chunk is not None:
                await on_chunk(chunk)
        return out

    return await asyncio.wait_for(run(), HANG_S)


def _load(path, **kw) -> LlamaCppBackend:
    kw.setdefault("context_length", 1024)
    kw.setdefault("parallel", PARALLEL)
    return LlamaCppBackend.load(path, model_name="m", max_queued=16, threads=1, **kw)


def _requests(backend: LlamaCppBackend, real: bool) -> list[GenerationRequest]:
    """Eight requests of mixed prompt and output lengths; one prompt is longer than a prefill chunk. Each
    starts differently, so no request finds another's prompt in the cache."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    requests = []
    for i, word in enumerate(words):
        tokens = backend.tokenize(
            f"{word.title()} is word {i}. Tell a story about it:" + " and then" * (2 * i)
        )
        if i == 5:  # longer than one step's prefill budget
            tokens = (tokens * (PREFILL_CHUNK // len(tokens) + 2))[: PREFILL_CHUNK + 40]
        params = SamplingParams(
            max_tokens=6 + (4 if real else 7) * i,
            temperature=0.0,
            ignore_eos=not real,  # random weights: run to max_tokens
            logprobs=2 if i % 3 == 0 else None,
            stop=(".\n",) if real and i == 2 else (),
        )
        requests.append(GenerationRequest(f"r{i}", tokens, params))
    assert len(requests[5].prompt_token_ids) > PREFILL_CHUNK
    return requests


async def _serial(backend: LlamaCppBackend, requests: list[GenerationRequest]) -> list[Output]:
    return [await _collect(backend.generate(r)) for r in requests]


async def _concurrent(backend: LlamaCppBackend, requests: list[GenerationRequest]) -> list[Output]:
    return list(await asyncio.gather(*(_collect(backend.generate(r)) for r in requests)))


def _model_path(name: str, request: pytest.FixtureRequest):
    if name == "tiny":
        return request.getfixturevalue("tiny_llama").gguf_path
    return request.getfixturevalue("smollm2_gguf")


@pytest.mark.parametrize("model", ["tiny", "smollm2"])
def test_greedy_batched_outputs_equal_one_at_a_time(model: str, request: pytest.FixtureRequest):
    path = _model_path(model, request)

    async def main() -> None:
        alone, batched = _load(path), _load(path)
        try:
            requests = _requests(alone, real=model == "smollm2")
            expected = await _serial(alone, requests)
            got = await _concurrent(batched, requests)
            assert alone.engine.counters.batch_size.snapshot().counts[0] == alone.engine.counters.steps
            sizes = batched.engine.counters.batch_size.snapshot()
            assert sizes.total / sizes.count > 2  # they did share steps
            for e, g in zip(expected, got, strict=True):
                assert (g.token_ids, g.text, g.finish) == (e.token_ids, e.text, e.finish)
                # the tiny model's F32 matmuls take another kernel for several rows (llamafile's sgemm) than
                # for one: its logprobs move in the 4th decimal (measured 1e-4); SmolLM2's (Q4_1) are equal
                assert g.logprobs == pytest.approx(e.logprobs, abs=1e-3 if model == "tiny" else 1e-6)
            assert {len(e.token_ids) for e in expected} != {1}  # texts of several lengths: none mixed up
            assert len({e.text for e in expected}) == len(expected)
        finally:
            await alone.aclose()
            await batched.aclose()

    asyncio.run(main())


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(tiny_llama):
    async def main() -> None:
        backend = _load(tiny_llama.gguf_path)
        prompt = backend.tokenize("Once upon a time")

        def req(i: int, seed: int, temperature: float = 1.0) -> GenerationRequest:
            params = SamplingParams(
                max_tokens=24, temperature=temperature, top_p=0.9, seed=seed, ignore_eos=True
            )
            return GenerationRequest(f"s{i}", prompt, params)

        try:
            seeded = [req(i, seed=100 + i % 3) for i in range(6)]
            alone = await _serial(backend, seeded)
            noise = [req(10 + i, seed=7 * i, temperature=1.5) for i in range(2)]
            together = await _concurrent(backend, [*seeded, *noise])
            assert [o.token_ids for o in together[:6]] == [o.token_ids for o in alone]
            assert together[0].token_ids == together[3].token_ids  # same seed, same batch
            assert together[0].token_ids != together[1].token_ids  # other seed
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_a_request_joins_a_running_batch(tiny_llama):
    async def main() -> None:
        backend = _load(tiny_llama.gguf_path)
        long = GenerationRequest(
            "long",
            backend.tokenize("A long one"),
            SamplingParams(max_tokens=120, temperature=0.0, ignore_eos=True),
        )
        short = GenerationRequest(
            "short",
            backend.tokenize("A short one"),
            SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True),
        )
        started = asyncio.Event()
        seen = 0

        async def on_chunk(_: GenerationChunk) -> None:
            nonlocal seen
            seen += 1
            if seen == 3:
                started.set()

        try:
            running = asyncio.create_task(_collect(backend.generate(long), on_chunk))
            await asyncio.wait_for(started.wait(), HANG_S)
            joined = await _collect(backend.generate(short))
            finished = await running
            assert len(joined.token_ids) == 5 and len(finished.token_ids) == 120
            spans = {s.request_id: s for s in backend.engine.spans}
            a, b = spans["long"], spans["short"]
            assert a.first_token_step is not None and b.finished_step is not None
            assert a.first_token_step < b.placed_step  # placed while the long one was generating ...
            assert b.finished_step < (a.finished_step or 0)  # ... and done before it: not queued behind it
            assert backend.engine.counters.steps < 120 + 5  # steps were shared
        finally:
            await backend.aclose()

    asyncio.run(main())


async def _until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), HANG_S)


def test_a_disconnect_frees_its_cells_and_a_waiting_request_gets_them(tiny_llama):
    """A unified pool holding one full context: the second request waits (it does not fail) until the first
    one's client goes away and the engine frees its cells."""

    async def main() -> None:
        backend = _load(tiny_llama.gguf_path, context_length=256, parallel=2, kv_cells=256, kv_unified=True)
        engine = backend.engine
        params = SamplingParams(max_tokens=10_000, temperature=0.0, ignore_eos=True)
        first = backend.generate(GenerationRequest("first", backend.tokenize("First"), params))
        try:
            chunk = await asyncio.wait_for(first.__anext__(), HANG_S)
            assert chunk.token_ids
            await _until(lambda: engine.pool.live_cells > 5)
            usage = backend.stats().engine
            assert usage is not None and usage.kv_cache_usage > 0
            second = backend.generate(
                GenerationRequest(
                    "second", backend.tokenize("Second"), SamplingParams(max_tokens=4, temperature=0.0)
                )
            )
            await _until(lambda: engine.num_waiting == 1)
            assert backend.stats().running == 1 and backend.stats().waiting == 1
            await first.aclose()  # the client goes away
            out = await _collect(second)
            assert out.finish is not None and out.token_ids
            await _until(lambda: backend.stats().running == 0)
            stats = backend.stats().engine
            assert stats is not None and stats.kv_cache_usage == 0.0
            # the aborted request's cells are free; the finished one keeps its KV for reuse
            assert engine.pool.cached_cells == len(backend.tokenize("Second")) + len(out.token_ids) - 1
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_split_kv_gives_each_sequence_its_own_cells(tiny_llama):
    """Split KV (the default): kv_cells/parallel cells per sequence, which bounds the context length; a
    request that could not fit beside a long one in that many shared cells runs at once."""

    async def main() -> None:
        backend = _load(tiny_llama.gguf_path, context_length=1024, parallel=2, kv_cells=512)
        engine = backend.engine
        assert engine.context_length == 256 and not engine.pool.shared
        params = SamplingParams(max_tokens=10_000, temperature=0.0, ignore_eos=True)
        first = backend.generate(GenerationRequest("first", backend.tokenize("First"), params))
        try:
            assert (await asyncio.wait_for(first.__anext__(), HANG_S)).token_ids
            second = backend.generate(GenerationRequest("second", backend.tokenize("Second"), params))
            assert (await asyncio.wait_for(second.__anext__(), HANG_S)).token_ids
            assert backend.stats().running == 2 and backend.stats().waiting == 0
            await second.aclose()
        finally:
            await first.aclose()
            await backend.aclose()

    asyncio.run(main())


def test_turn_two_computes_only_its_new_tokens(smollm2_gguf):
    async def main() -> None:
        backend = _load(smollm2_gguf)
        counters = backend.engine.counters
        greedy = SamplingParams(max_tokens=24, temperature=0.0)
        try:
            turn1 = backend.tokenize(
                "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n"
            )
            out1 = await _collect(backend.generate(GenerationRequest("t1", turn1, greedy)))
            computed, hits = counters.prompt_computed, counters.prefix_hits
            assert computed == len(turn1) and hits == 0
            turn2 = [
                *turn1,
                *out1.token_ids,
                *backend.tokenize("\n<|im_start|>user\nAnd two more?<|im_end|>\n"),
            ]
            await _collect(backend.generate(GenerationRequest("t2", turn2, greedy)))
            in_kv = len(turn1) + len(out1.token_ids) - 1  # the last sampled token was never decoded
            assert counters.prefix_hits - hits == in_kv
            assert counters.prompt_computed - computed == len(turn2) - in_kv

            # the same through the chat template: turn 2 renders turn 1's answer back
            def chat(*messages: tuple[Role, str]) -> list[int]:
                conversation = Conversation(tuple(Message.of_text(role, text) for role, text in messages))
                return backend.render_prompt(conversation, RenderOptions()).token_ids

            first = chat((Role.USER, "What is a tandem bicycle?"))
            answer = await _collect(backend.generate(GenerationRequest("c1", first, greedy)))
            second = chat(
                (Role.USER, "What is a tandem bicycle?"), (Role.ASSISTANT, answer.text), (Role.USER, "Why?")
            )
            computed, hits = counters.prompt_computed, counters.prefix_hits
            await _collect(backend.generate(GenerationRequest("c2", second, greedy)))
            assert counters.prefix_hits - hits >= len(first)  # at least the whole first prompt reused
            assert counters.prompt_computed - computed == len(second) - (counters.prefix_hits - hits)
            metrics = backend.stats().engine
            assert metrics is not None and metrics.prompt_tokens_computed == counters.prompt_computed
            assert metrics.prefix_cache_hits == counters.prefix_hits
        finally:
            await backend.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("kv_unified", [False, True], ids=["split", "unified"])
def test_a_prefix_is_copied_from_a_running_sequence(tiny_llama, kv_unified: bool):
    """Unified, the copy shares the running sequence's cells; split, its stream is copied and cut back."""

    async def main() -> None:
        backend = _load(tiny_llama.gguf_path, kv_unified=kv_unified)
        counters = backend.engine.counters
        system = backend.tokenize("You are a helpful assistant. " * 10)
        params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
        started = asyncio.Event()

        async def on_chunk(_: GenerationChunk) -> None:
            started.set()

        try:
            first = asyncio.create_task(
                _collect(backend.generate(GenerationRequest("a", [*system, 5, 6], params)), on_chunk)
            )
            await asyncio.wait_for(started.wait(), HANG_S)
            hits = counters.prefix_hits
            copied = await _collect(backend.generate(GenerationRequest("b", [*system, 7, 8], params)))
            assert counters.prefix_hits - hits == len(system)
            await first
            fresh = _load(tiny_llama.gguf_path)
            try:  # the shared cells give the same output as computing the prefix anew
                assert (
                    await _collect(fresh.generate(GenerationRequest("b", [*system, 7, 8], params)))
                ) == copied
            finally:
                await fresh.aclose()
        finally:
            await backend.aclose()

    asyncio.run(main())


WEATHER = ToolDefinition(
    "get_weather",
    parameters=json.dumps(
        {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    ),
)
# bounded strings: a random-weight model ends a free string only when it happens to sample a quote
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def test_structured_output_and_a_forced_tool_call_inside_a_batch(tiny_llama):
    async def main() -> None:
        backend = _load(tiny_llama.gguf_path)
        forced = forced_call_output(
            Conversation(
                (Message.of_text(Role.USER, "weather?"),),
                tools=(WEATHER,),
                tool_choice=ToolChoice(ToolChoiceKind.NAMED, "get_weather"),
            )
        )
        assert forced is not None
        specs = [
            StructuredOutput("json_schema", json.dumps(PERSON)),
            forced,
            None,
            StructuredOutput("json_object"),
            None,
        ]
        prompt = backend.tokenize("Give me a JSON object describing a person:")
        requests = [  # the unconstrained ones keep the others company
            GenerationRequest(
                f"j{i}",
                prompt,
                SamplingParams(max_tokens=512 if spec else 40, temperature=0.0, structured=spec),
            )
            for i, spec in enumerate(specs)
        ]
        try:
            alone = await _serial(backend, requests)
            together = await _concurrent(_load_again := _load(tiny_llama.gguf_path), requests)
            await _load_again.aclose()
            assert [o.token_ids for o in together] == [o.token_ids for o in alone]
            jsonschema.validate(json.loads(together[0].text), PERSON)
            call = json.loads(together[1].text)
            assert call["name"] == "get_weather"
            jsonschema.validate(call["arguments"], WEATHER.schema())
            assert isinstance(json.loads(together[3].text), dict)
            assert all(o.finish is FinishReason.STOP for o in (together[0], together[1], together[3]))
        finally:
            await backend.aclose()

    asyncio.run(main())


def test_parallel_is_a_llamacpp_setting(monkeypatch: pytest.MonkeyPatch):
    from pydantic import ValidationError

    from gateway.config import ModelSpec
    from gateway.settings import Settings

    spec = ModelSpec(name="m", backend="llamacpp", path="m.gguf", parallel=2, kv_cells=4096, kv_unified=True)
    assert (spec.parallel, spec.kv_cells, spec.kv_unified) == (2, 4096, True)
    with pytest.raises(ValidationError, match="apply to backend 'llamacpp' only"):
        ModelSpec(name="m", backend="paged", path="ckpt", parallel=2)
    with pytest.raises(ValidationError, match="apply to backend 'llamacpp' only"):
        ModelSpec(name="m", backend="paged", path="ckpt", kv_unified=False)
    with pytest.raises(ValidationError):
        ModelSpec(name="m", backend="llamacpp", path="m.gguf", parallel=0)
    monkeypatch.delenv("TANDEM_LLAMACPP_PARALLEL", raising=False)
    assert Settings().llamacpp_parallel == 4
    monkeypatch.setenv("TANDEM_LLAMACPP_PARALLEL", "8")
    assert Settings().llamacpp_parallel == 8
