"""Sampling: seeds, truncation, penalties, bias, min_tokens, ignore_eos and logprobs."""

from __future__ import annotations

import math
import random

import pytest

torch = pytest.importorskip("torch")

from backends.base import FinishReason, GenerationRequest, SamplingParams  # noqa: E402
from backends.paged.config import EngineConfig  # noqa: E402
from backends.paged.engine import LLMEngine  # noqa: E402
from backends.paged.sampler import Sampler, SamplingBatch  # noqa: E402
from backends.paged.sequence import Sequence  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine_factory(tiny_llama):
    def make(**overrides) -> LLMEngine:
        config = {"num_kv_blocks": 128, "dtype": "float32", "device": "cpu"} | overrides
        return LLMEngine.from_pretrained(tiny_llama.hf_dir, EngineConfig(**config))

    return make


def _prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000) for _ in range(n)]


def _run(engine: LLMEngine, requests: list[GenerationRequest]) -> dict[str, list[int]]:
    out = engine.generate(requests)
    engine.check_invariants()
    return out


def test_seed_reproducible_whatever_the_batch(engine_factory):
    prompt = _prompt(1, 12)
    seeded = SamplingParams(max_tokens=16, temperature=1.0, seed=1234, ignore_eos=True)
    alone = _run(engine_factory(), [GenerationRequest("s", prompt, seeded)])["s"]
    others = [
        GenerationRequest("greedy", _prompt(2, 30), SamplingParams(max_tokens=20, temperature=0.0)),
        GenerationRequest("unseeded", _prompt(3, 5), SamplingParams(max_tokens=9, temperature=0.7)),
        GenerationRequest("other-seed", prompt, SamplingParams(max_tokens=16, temperature=1.0, seed=99)),
        GenerationRequest("s", prompt, seeded),
        GenerationRequest("twin", prompt, seeded),
    ]
    batched = _run(engine_factory(max_num_batched_tokens=16), others)
    assert batched["s"] == alone
    assert batched["twin"] == alone  # same seed, same prompt: same tokens, in the same step
    assert batched["other-seed"] != alone


def test_truncation_to_one_token_equals_greedy(engine_factory):
    prompt = _prompt(4, 20)
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    requests = [
        GenerationRequest("greedy", prompt, greedy),
        GenerationRequest(
            "top_k", prompt, SamplingParams(max_tokens=12, temperature=1.3, top_k=1, ignore_eos=True)
        ),
        GenerationRequest(
            "top_p", prompt, SamplingParams(max_tokens=12, temperature=1.3, top_p=1e-6, ignore_eos=True)
        ),
        GenerationRequest(
            "min_p", prompt, SamplingParams(max_tokens=12, temperature=1.3, min_p=1.0, ignore_eos=True)
        ),
    ]
    out = _run(engine_factory(), requests)
    assert out["top_k"] == out["greedy"]
    assert out["top_p"] == out["greedy"]
    assert out["min_p"] == out["greedy"]


def test_logprobs_equal_log_softmax_of_a_reference_forward(engine_factory, tiny_llama):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama.hf_dir, dtype=torch.float32).eval()
    prompt = _prompt(5, 9)
    engine = engine_factory()
    engine.add_request(
        GenerationRequest("g", prompt, SamplingParams(max_tokens=6, temperature=0.0, logprobs=3))
    )
    engine.add_request(
        GenerationRequest("s", prompt, SamplingParams(max_tokens=6, temperature=1.0, seed=7, logprobs=0))
    )
    outputs: dict[str, list] = {"g": [], "s": []}
    while engine.has_unfinished():
        for out in engine.step():
            outputs[out.request_id] += list(zip(out.new_token_ids, out.logprobs or [], strict=True))
    for rid, k in (("g", 3), ("s", 0)):
        tokens = [t for t, _ in outputs[rid]]
        with torch.no_grad():
            logits = hf(torch.tensor([prompt + tokens])).logits[0].float()
        reference = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
        for step, (token, lp) in enumerate(outputs[rid]):
            assert lp.logprob == pytest.approx(reference[step, token].item(), abs=1e-4)
            assert len(lp.top) == k
            if k:
                values, ids = reference[step].topk(k)
                assert [t for t, _ in lp.top] == ids.tolist()
                assert [v for _, v in lp.top] == pytest.approx(values.tolist(), abs=1e-4)
                assert token == ids[0].item()  # greedy: the chosen token is the best one


def _batch(rows: list[tuple[list[int], list[int], SamplingParams]], vocab: int, eos=(0,)) -> SamplingBatch:
    seqs = []
    for i, (prompt, output, params) in enumerate(rows):
        seq = Sequence(f"r{i}", list(prompt), params, arrival=i)
        seq.start_running()
        for token in output:
            seq.append_token(token)
        if params.seed is not None:
            seq.generator = torch.Generator().manual_seed(params.seed)
        seqs.append(seq)
    return SamplingBatch.build(seqs, vocab, eos)


def test_penalties_follow_vllm_definitions():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 1.0]])
    params = SamplingParams(
        max_tokens=9,
        temperature=0.0,
        repetition_penalty=2.0,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        logprobs=5,
    )
    out = Sampler()(logits.clone(), _batch([([0, 4], [1, 1, 2], params)], vocab=5, eos=()))
    # Repetition (prompt + output: tokens 0, 1, 2, 4): positive / 2, negative * 2.
    # Frequency (output counts: 1 -> 2, 2 -> 1) * 0.5 and presence (tokens 1, 2) 0.25 subtracted.
    expected = torch.tensor([[1.0, -2.0 - 1.0 - 0.25, 0.25 - 0.5 - 0.25, 3.0, 0.5]])
    assert out.token_ids.tolist() == [3]
    assert out.top_ids is not None and out.top_logprobs is not None
    got = dict(zip(out.top_ids[0].tolist(), out.top_logprobs[0].tolist(), strict=True))
    want = torch.log_softmax(expected, dim=-1)[0].tolist()
    assert [got[i] for i in range(5)] == pytest.approx(want, abs=1e-6)


def test_logit_bias_and_min_tokens_unit():
    logits = torch.tensor([[5.0, 1.0, 2.0, 0.0], [5.0, 1.0, 2.0, 0.0], [5.0, 1.0, 2.0, 0.0]])
    rows = [
        ([1], [], SamplingParams(max_tokens=4, temperature=0.0, logit_bias={3: 10.0})),
        ([1], [2], SamplingParams(max_tokens=4, temperature=0.0, min_tokens=2)),  # eos (0) masked
        ([1], [2, 2], SamplingParams(max_tokens=4, temperature=0.0, min_tokens=2)),  # reached: allowed
    ]
    out = Sampler()(logits.clone(), _batch(rows, vocab=4, eos=(0,)))
    assert out.token_ids.tolist() == [3, 2, 0]


def test_min_tokens_masks_stop_token_ids_too():
    logits = torch.tensor([[1.0, 5.0, 2.0, 0.0]])
    params = SamplingParams(max_tokens=4, temperature=0.0, min_tokens=1, stop_token_ids=(1,))
    assert Sampler()(logits.clone(), _batch([([3], [], params)], vocab=4, eos=(0,))).token_ids.tolist() == [2]


def test_sampling_follows_the_distribution_and_truncation():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    probs = torch.softmax(logits, dim=-1)
    rows = 4000
    plain = _batch([([1], [], SamplingParams(max_tokens=1, temperature=1.0))] * rows, vocab=4)
    counts = torch.bincount(Sampler()(logits.repeat(rows, 1), plain).token_ids, minlength=4) / rows
    assert counts.tolist() == pytest.approx(probs.tolist(), abs=0.03)

    top_k = _batch([([1], [], SamplingParams(max_tokens=1, temperature=1.0, top_k=2))] * rows, vocab=4)
    counts = torch.bincount(Sampler()(logits.repeat(rows, 1), top_k).token_ids, minlength=4) / rows
    kept = torch.softmax(torch.tensor([1.0, 2.0]), dim=-1)
    assert counts.tolist() == pytest.approx([0.0, kept[0].item(), kept[1].item(), 0.0], abs=0.03)

    # top_p 0.7 over [0.67, 0.24, 0.09, 0.03]: the two most likely tokens remain.
    top_p = _batch([([1], [], SamplingParams(max_tokens=1, temperature=1.0, top_p=0.7))] * rows, vocab=4)
    counts = torch.bincount(Sampler()(logits.repeat(rows, 1), top_p).token_ids, minlength=4) / rows
    assert counts[0].item() == 0.0 and counts[3].item() == 0.0

    cold = _batch([([1], [], SamplingParams(max_tokens=1, temperature=0.05))] * 200, vocab=4)
    assert set(Sampler()(logits.repeat(200, 1), cold).token_ids.tolist()) == {2}


def test_seeded_rows_ignore_their_neighbours():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    seeded = SamplingParams(max_tokens=1, temperature=1.0, seed=5)
    alone = Sampler()(logits[2:3].clone(), _batch([([1], [], seeded)], vocab=50)).token_ids.item()
    mixed_rows = [([1], [], SamplingParams(max_tokens=1, temperature=0.9))] * 6
    mixed_rows[2] = ([1], [], seeded)
    mixed = Sampler()(logits.clone(), _batch(mixed_rows, vocab=50)).token_ids.tolist()
    assert mixed[2] == alone


def test_ignore_eos_and_min_tokens_in_the_engine(engine_factory, tiny_llama):
    eos = tiny_llama.eos_token_id
    prompt = _prompt(6, 8)
    force_eos = {eos: 100.0}
    engine = engine_factory()

    def run(params: SamplingParams) -> tuple[list[int], FinishReason | None]:
        engine.add_request(GenerationRequest("x", prompt, params))
        tokens, reason = [], None
        while engine.has_unfinished():
            for out in engine.step():
                tokens += out.new_token_ids
                reason = out.finish_reason
        return tokens, reason

    assert run(SamplingParams(max_tokens=6, temperature=0.0, logit_bias=force_eos)) == (
        [eos],
        FinishReason.STOP,
    )
    tokens, reason = run(SamplingParams(max_tokens=6, temperature=0.0, logit_bias=force_eos, min_tokens=3))
    assert len(tokens) == 4 and eos not in tokens[:3] and tokens[3] == eos and reason is FinishReason.STOP
    tokens, reason = run(SamplingParams(max_tokens=6, temperature=0.0, logit_bias=force_eos, ignore_eos=True))
    assert tokens == [eos] * 6 and reason is FinishReason.LENGTH
    assert math.isfinite(engine.stats.kv_cache_usage)
