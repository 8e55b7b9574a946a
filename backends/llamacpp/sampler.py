"""Token sampling for one sequence over llama.cpp's logits, in numpy, with vLLM's semantics.

tandem samples itself instead of using llama.cpp's sampler chain so that dev and prod agree on what
every parameter means (penalties over the whole sequence, min_p, logit_bias, min_tokens, logprobs,
per-request seeds).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from backends.base import SamplingParams


@dataclass(frozen=True, slots=True)
class SampledToken:
    token_id: int
    logprob: float | None = None  # of the chosen token, from the model's raw (grammar-masked) distribution
    top: tuple[tuple[int, float], ...] = ()  # (token_id, logprob), best first


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


class SequenceSampler:
    """Samples the next token of one sequence; keeps the token counts the penalties need."""

    def __init__(
        self, params: SamplingParams, prompt_ids: Iterable[int], vocab_size: int, eos_ids: Iterable[int]
    ) -> None:
        self.params = params
        self._rng: np.random.Generator | None = None  # made at the first random draw: greedy needs none
        self._vocab_size = vocab_size
        self._seen = np.zeros(vocab_size, dtype=bool)  # prompt + output, for the repetition penalty
        ids = np.fromiter((t for t in prompt_ids if 0 <= t < vocab_size), dtype=np.int64)
        self._seen[ids] = True
        self._output_counts = np.zeros(vocab_size, dtype=np.float32)
        self._num_generated = 0
        self._eos_mask_ids = np.fromiter(
            {*eos_ids, *params.stop_token_ids} & set(range(vocab_size)), dtype=np.int64
        )
        self._bias_ids = np.fromiter((t for t in params.logit_bias if 0 <= t < vocab_size), dtype=np.int64)
        self._bias_values = np.array([params.logit_bias[t] for t in self._bias_ids], dtype=np.float32)
        # greedy on the logits as they are (no bias, penalties or min_tokens): argmax needs no copy of them
        self._plain_greedy = (
            params.temperature == 0.0
            and not self._bias_ids.size
            and params.min_tokens == 0
            and params.repetition_penalty == 1.0
            and not params.frequency_penalty
            and not params.presence_penalty
        )

    def sample(self, raw_logits: np.ndarray, allowed: np.ndarray | None = None) -> SampledToken:
        """allowed: a grammar's mask of the tokens that may come next (structured output), or None.

        The mask applies before everything else, logprobs included (as in vLLM: a token the grammar
        forbids has logprob -inf). The grammar also decides when the output may end, so min_tokens
        does not hold end-of-sequence back on a constrained sequence.
        """
        p = self.params
        if allowed is not None:
            raw_logits = np.where(allowed, raw_logits, np.float32(-np.inf))
        if self._plain_greedy and p.logprobs is None:
            token = int(np.argmax(raw_logits))
            self._record(token)
            return SampledToken(token)
        logits = raw_logits.astype(np.float32, copy=True)
        if self._bias_ids.size:
            logits[self._bias_ids] += self._bias_values
        if self._num_generated < p.min_tokens and self._eos_mask_ids.size and p.structured is None:
            logits[self._eos_mask_ids] = -np.inf
        self._apply_penalties(logits)

        if p.temperature == 0.0:
            token = int(np.argmax(logits))
        else:
            token = self._sample_random(logits / p.temperature)

        result = SampledToken(token)
        if p.logprobs is not None:
            logprobs = _log_softmax(raw_logits.astype(np.float64))
            top: tuple[tuple[int, float], ...] = ()
            if p.logprobs > 0:
                best = np.argpartition(-logprobs, p.logprobs - 1)[: p.logprobs]
                best = best[np.argsort(-logprobs[best], kind="stable")]
                # tokens a grammar forbids (-inf) are not candidates: fewer than k may come back
                top = tuple((int(t), float(logprobs[t])) for t in best if np.isfinite(logprobs[t]))
            result = SampledToken(token, float(logprobs[token]), top)
        self._record(token)
        return result

    def _record(self, token: int) -> None:
        self._num_generated += 1
        if 0 <= token < self._vocab_size:
            self._seen[token] = True
            self._output_counts[token] += 1

    def _apply_penalties(self, logits: np.ndarray) -> None:
        p = self.params
        if p.repetition_penalty != 1.0:
            seen = self._seen
            logits[seen] = np.where(
                logits[seen] > 0, logits[seen] / p.repetition_penalty, logits[seen] * p.repetition_penalty
            )
        if p.frequency_penalty:
            logits -= p.frequency_penalty * self._output_counts
        if p.presence_penalty:
            logits -= p.presence_penalty * (self._output_counts > 0)

    def _sample_random(self, logits: np.ndarray) -> int:
        p = self.params
        if 0 < p.top_k < logits.size:
            kth = np.partition(logits, -p.top_k)[-p.top_k]
            logits[logits < kth] = -np.inf
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            # keep the smallest prefix whose mass reaches top_p (always at least the best token)
            drop = order[np.searchsorted(cumulative, p.top_p, side="left") + 1 :]
            probs[drop] = 0.0
        if p.min_p > 0.0:
            probs[probs < p.min_p * probs.max()] = 0.0
        probs /= probs.sum()
        if self._rng is None:  # (the first request also imports numpy.random: ~15 ms)
            # any int: numpy takes no negative seed, OpenAI and vLLM accept any int64 (mod 2^64, as torch)
            self._rng = np.random.default_rng(None if p.seed is None else p.seed % 2**64)
        return int(self._rng.choice(probs.size, p=probs))
