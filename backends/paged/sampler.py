"""Batched sampling on device: one row per sampling sequence, no Python loop over the vocabulary.

Order, per row: grammar mask (structured output) -> min_tokens (end-of-sequence ids masked) ->
logit_bias -> repetition / frequency / presence penalties (vLLM's definitions) -> [logprobs are taken
here] -> greedy argmax, or temperature, min_p, top_k, top_p and an exponential race (argmax of p / E,
E ~ Exp(1), which draws from p). Seeded rows draw E from their own torch.Generator, so their tokens do not
depend on the rest of the batch; unseeded rows share one batched draw.

Structured output: the rows of constrained sequences get their grammar's bitmask (tokens
that cannot continue the document -> -inf), filled on the host by each sequence's matcher and applied in
one kernel call; a batch without a constrained sequence skips it. The grammar decides when such a row may
end, so min_tokens does not mask end-of-sequence there.

Logprobs are the log_softmax of the logits after the grammar mask, min_tokens, logit_bias and
penalties, before temperature and truncation (vLLM returns those of the raw logits by default; without
penalties or bias the two agree).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from backends import structured
from backends.paged.sequence import Sequence


@dataclass(slots=True)
class SamplingBatch:
    """Per-row sampling parameters as device tensors, plus flags that skip unused stages."""

    grammar: tuple[torch.Tensor, torch.Tensor] | None  # int32 bitmask [B, ceil(V / 32)]; its rows [R]
    temperature: torch.Tensor  # [B] float32, 1.0 on greedy rows
    greedy: torch.Tensor  # [B] bool
    all_greedy: bool
    top_k: torch.Tensor | None  # [B] int64, vocab size where disabled
    top_p: torch.Tensor | None  # [B] float32
    min_p: torch.Tensor | None  # [B] float32
    repetition: torch.Tensor | None  # [B, 1] float32 (all penalties None when no row uses any)
    frequency: torch.Tensor | None
    presence: torch.Tensor | None
    prompt_tokens: torch.Tensor | None  # [B, Lp] int64, padded with vocab_size
    output_tokens: torch.Tensor | None  # [B, Lo] int64, padded with vocab_size
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # rows, token ids, values
    banned: tuple[torch.Tensor, torch.Tensor] | None  # rows, token ids masked to -inf (min_tokens)
    generators: list[tuple[int, torch.Generator]]  # seeded rows
    max_logprobs: int | None  # largest top-k asked for; None: no row wants logprobs

    @classmethod
    def build(
        cls,
        seqs: Seq[Sequence],
        vocab_size: int,
        eos_ids: tuple[int, ...],
        to_device: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ) -> SamplingBatch:
        """Host-side; `to_device` copies a CPU tensor over (the runner pins it: no stream sync)."""
        params = [s.params for s in seqs]
        temps = [1.0 if p.greedy else p.temperature for p in params]
        greedy = [p.greedy for p in params]

        def tensor(values: list, dtype: torch.dtype) -> torch.Tensor:
            return to_device(torch.tensor(values, dtype=dtype))

        sampled = [p for p in params if not p.greedy]
        top_k = top_p = min_p = None
        if any(0 < p.top_k < vocab_size for p in sampled):
            top_k = tensor([p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params], torch.int64)
        if any(p.top_p < 1.0 for p in sampled):
            top_p = tensor([p.top_p for p in params], torch.float32)
        if any(p.min_p > 0.0 for p in sampled):
            min_p = tensor([p.min_p for p in params], torch.float32)

        repetition = frequency = presence = prompt_tokens = output_tokens = None
        if any(p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty for p in params):
            repetition = tensor([[p.repetition_penalty] for p in params], torch.float32)
            frequency = tensor([[p.frequency_penalty] for p in params], torch.float32)
            presence = tensor([[p.presence_penalty] for p in params], torch.float32)
            prompt_tokens = to_device(_padded([s.token_ids[: s.num_prompt_tokens] for s in seqs], vocab_size))
            output_tokens = to_device(_padded([s.output_token_ids for s in seqs], vocab_size))

        bias = None
        bias_rows, bias_ids, bias_values = [], [], []
        for row, p in enumerate(params):
            for token_id, value in p.logit_bias.items():
                if 0 <= token_id < vocab_size:
                    bias_rows.append(row)
                    bias_ids.append(token_id)
                    bias_values.append(value)
        if bias_rows:
            bias = (
                tensor(bias_rows, torch.int64),
                tensor(bias_ids, torch.int64),
                tensor(bias_values, torch.float32),
            )

        grammar = None
        constrained = [(row, s.grammar) for row, s in enumerate(seqs) if s.grammar is not None]
        if constrained:
            rows = [row for row, _ in constrained]
            bitmask = structured.batch_bitmask([m for _, m in constrained], rows, len(seqs))
            grammar = (to_device(bitmask), tensor(rows, torch.int32))

        banned = None
        ban_rows, ban_ids = [], []
        for row, s in enumerate(seqs):
            if s.num_output_tokens < s.params.min_tokens and s.params.structured is None:
                for token_id in {*eos_ids, *s.params.stop_token_ids}:
                    if 0 <= token_id < vocab_size:
                        ban_rows.append(row)
                        ban_ids.append(token_id)
        if ban_rows:
            banned = (tensor(ban_rows, torch.int64), tensor(ban_ids, torch.int64))

        wanted = [p.logprobs for p in params if p.logprobs is not None]
        return cls(
            grammar=grammar,
            temperature=tensor(temps, torch.float32),
            greedy=tensor(greedy, torch.bool),
            all_greedy=all(greedy),
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition=repetition,
            frequency=frequency,
            presence=presence,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            bias=bias,
            banned=banned,
            generators=[(row, s.generator) for row, s in enumerate(seqs) if s.generator is not None],
            max_logprobs=min(max(wanted), vocab_size) if wanted else None,
        )


def _padded(rows: list[list[int]], pad: int) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), pad, dtype=torch.int64)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
    return out


@dataclass(slots=True)
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None = None  # [B] float32, of the chosen tokens
    top_ids: torch.Tensor | None = None  # [B, k] int64, best first
    top_logprobs: torch.Tensor | None = None  # [B, k] float32


class Sampler:
    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """logits [B, V] float32 (modified in place)."""
        vocab = logits.shape[1]
        if batch.grammar is not None:
            structured.apply_bitmask(logits, *batch.grammar)
        if batch.banned is not None:
            logits[batch.banned] = float("-inf")
        if batch.bias is not None:
            rows, ids, values = batch.bias
            logits.index_put_((rows, ids), values, accumulate=True)
        if batch.repetition is not None:
            _apply_penalties(logits, batch, vocab)

        logprobs = torch.log_softmax(logits, dim=-1) if batch.max_logprobs is not None else None
        tokens = logits.argmax(dim=-1)
        if not batch.all_greedy:
            tokens = torch.where(batch.greedy, tokens, _sample(logits, batch))

        out = SamplerOutput(tokens)
        if logprobs is not None and batch.max_logprobs is not None:
            out.logprobs = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
            if batch.max_logprobs > 0:
                out.top_logprobs, out.top_ids = logprobs.topk(batch.max_logprobs, dim=-1)
        return out


def _apply_penalties(logits: torch.Tensor, batch: SamplingBatch, vocab: int) -> None:
    assert batch.prompt_tokens is not None and batch.output_tokens is not None
    assert batch.repetition is not None and batch.frequency is not None and batch.presence is not None
    rows = logits.shape[0]
    output_counts = torch.zeros(rows, vocab + 1, device=logits.device, dtype=logits.dtype)
    output_counts.scatter_add_(
        1, batch.output_tokens, torch.ones_like(batch.output_tokens, dtype=logits.dtype)
    )
    output_counts = output_counts[:, :vocab]
    seen = torch.zeros(rows, vocab + 1, device=logits.device, dtype=torch.bool)
    seen.scatter_(1, batch.prompt_tokens, True)
    seen = seen[:, :vocab] | (output_counts > 0)
    # Repetition (prompt and output): divide positive logits, multiply negative ones.
    penalty = torch.where(seen, batch.repetition, 1.0)
    logits.copy_(torch.where(logits > 0, logits / penalty, logits * penalty))
    # Frequency and presence (output only): subtract.
    logits -= batch.frequency * output_counts + batch.presence * (output_counts > 0)


def _sample(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    logits = logits / batch.temperature.unsqueeze(1)
    if batch.min_p is not None:
        probs = logits.softmax(dim=-1)
        threshold = probs.amax(dim=-1, keepdim=True) * batch.min_p.unsqueeze(1)
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    if batch.top_k is not None or batch.top_p is not None:
        logits = _top_k_top_p(logits, batch.top_k, batch.top_p)
    probs = logits.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_()
    for row, generator in batch.generators:
        race[row].exponential_(generator=generator)
    return probs.div_(race).argmax(dim=-1)


def _top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor:
    ordered, order = logits.sort(dim=-1, descending=False)
    if top_k is not None:
        kth = ordered.gather(1, (ordered.shape[1] - top_k).clamp(min=0).unsqueeze(1))
        ordered.masked_fill_(ordered < kth, float("-inf"))
    if top_p is not None:
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1.0 - top_p.unsqueeze(1)
        drop[:, -1] = False  # the most likely token always stays
        ordered.masked_fill_(drop, float("-inf"))
    return ordered.scatter(1, order, ordered)
