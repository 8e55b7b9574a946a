"""The dev backend's sampler: each parameter does what vLLM's does."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import SamplingParams
from backends.llamacpp.sampler import SequenceSampler

VOCAB = 50
EOS = 49


def _logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=VOCAB).astype(np.float32) * 3


def _sampler(prompt=(1, 2, 3), **params) -> SequenceSampler:
    return SequenceSampler(SamplingParams(max_tokens=100, **params), prompt, VOCAB, [EOS])


def test_greedy_and_top_k_one_pick_the_argmax():
    logits = _logits()
    assert _sampler(temperature=0.0).sample(logits).token_id == int(np.argmax(logits))
    assert _sampler(temperature=1.5, top_k=1, seed=3).sample(logits).token_id == int(np.argmax(logits))


def test_seed_reproducible_and_seeds_differ():
    def run(seed: int) -> list[int]:
        sampler = _sampler(temperature=1.0, seed=seed)
        return [sampler.sample(_logits(i)).token_id for i in range(30)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_top_p_and_min_p_restrict_the_candidates():
    logits = np.full(VOCAB, -10.0, dtype=np.float32)
    logits[[4, 5]] = [5.0, 4.0]
    for _ in range(20):
        assert _sampler(temperature=1.0, top_p=0.5).sample(logits).token_id == 4
        assert _sampler(temperature=1.0, min_p=0.5).sample(logits).token_id == 4


def test_logit_bias_forces_a_token():
    assert _sampler(temperature=0.0, logit_bias={17: 100.0}).sample(_logits()).token_id == 17


def test_min_tokens_masks_eos_until_reached():
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[EOS] = 50.0
    sampler = _sampler(temperature=0.0, min_tokens=2)
    assert sampler.sample(logits).token_id != EOS
    assert sampler.sample(logits).token_id != EOS
    assert sampler.sample(logits).token_id == EOS


def test_penalties_discourage_repeats():
    logits = np.zeros(VOCAB, dtype=np.float32)
    logits[10], logits[11] = 2.0, 1.9
    # repetition penalty applies to prompt tokens too: 10 is in the prompt
    assert _sampler(prompt=(10,), temperature=0.0, repetition_penalty=1.5).sample(logits).token_id == 11
    for name in ("presence_penalty", "frequency_penalty"):
        sampler = _sampler(prompt=(), temperature=0.0, **{name: 1.0})
        assert sampler.sample(logits).token_id == 10
        assert sampler.sample(logits).token_id == 11  # 10 was generated once: penalised


@pytest.mark.parametrize("k", [0, 3])
def test_logprobs_are_log_softmax_of_the_raw_logits(k):
    logits = _logits()
    expected = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum())
    sampled = _sampler(temperature=0.0, logprobs=k, logit_bias={0: 5.0}).sample(logits)
    assert sampled.logprob == pytest.approx(expected[sampled.token_id])
    assert [t for t, _ in sampled.top] == list(np.argsort(-expected)[:k])
    for token, logprob in sampled.top:
        assert logprob == pytest.approx(expected[token])
