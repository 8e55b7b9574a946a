"""Paged-KV kernel references (kernels/reference.py) against a naive dense attention, and the public API's
choice of them on CPU."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.reference import paged_attention_decode_ref, paged_attention_prefill_ref, write_kv_cache_ref
from tests.kernel_support import Paged, assert_close, decode_inputs, naive_attention, prefill_inputs

DECODE_CASES = [  # (context_lens, num_kv_heads, group, head_dim, dtype)
    ([1, 16, 17, 45], 2, 1, 16, torch.float32),
    ([5, 33, 64, 0], 2, 2, 32, torch.float32),  # 0 = padded batch entry -> zeros
    ([70, 3], 1, 4, 64, torch.bfloat16),
    ([20, 31], 2, 3, 24, torch.float16),  # non-power-of-two group and head_dim
]
PREFILL_CASES = [  # (context_lens, q_lens, num_kv_heads, group, head_dim, dtype)
    ([20, 37], [20, 37], 2, 1, 16, torch.float32),  # plain prefill from an empty cache
    ([40, 17, 50, 9], [7, 1, 20, 9], 2, 2, 32, torch.float32),  # chunks over cached prefixes, q_len 1
    ([33, 12, 5], [33, 0, 2], 1, 4, 64, torch.bfloat16),  # a sequence with no new tokens
    ([29], [13], 2, 3, 24, torch.float16),
]


@pytest.mark.parametrize("ctx,num_kv_heads,group,head_dim,dtype", DECODE_CASES)
def test_decode_reference_matches_naive(ctx, num_kv_heads, group, head_dim, dtype):
    paged, q = decode_inputs(ctx, num_kv_heads, group, head_dim, dtype)
    out = paged_attention_decode_ref(
        q, paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, 0.3
    )
    for b, c in enumerate(ctx):
        expected = (
            torch.zeros_like(q[b : b + 1], dtype=torch.float64)
            if c == 0
            else naive_attention(q[b : b + 1], paged.dense_k[b], paged.dense_v[b], [c - 1], 0.3)
        )
        assert_close(out[b : b + 1], expected, dtype)


@pytest.mark.parametrize("ctx,q_lens,num_kv_heads,group,head_dim,dtype", PREFILL_CASES)
def test_prefill_reference_matches_naive(ctx, q_lens, num_kv_heads, group, head_dim, dtype):
    paged, q, cu = prefill_inputs(ctx, q_lens, num_kv_heads, group, head_dim, dtype)
    out = paged_attention_prefill_ref(
        q, paged.k_cache, paged.v_cache, paged.block_tables, cu, paged.context_lens, 0.2
    )
    for b, (c, n) in enumerate(zip(ctx, q_lens, strict=True)):
        rows = slice(int(cu[b]), int(cu[b + 1]))
        expected = naive_attention(q[rows], paged.dense_k[b], paged.dense_v[b], list(range(c - n, c)), 0.2)
        assert_close(out[rows], expected, dtype)


def test_write_reference_matches_naive_and_skips_padding():
    paged = Paged([0], 2, 16, torch.float32)
    k_cache, v_cache = paged.k_cache.clone(), paged.v_cache.clone()
    key, value = torch.randn(6, 2, 16), torch.randn(6, 2, 16)
    slots = torch.tensor([3, -1, 40, 17, -1, 0])
    write_kv_cache_ref(key, value, k_cache, v_cache, slots)
    expected_k, expected_v = paged.k_cache.clone().view(-1, 2, 16), paged.v_cache.clone().view(-1, 2, 16)
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            expected_k[slot], expected_v[slot] = key[t], value[t]
    assert torch.equal(k_cache.view(-1, 2, 16), expected_k)
    assert torch.equal(v_cache.view(-1, 2, 16), expected_v)


def test_public_api_uses_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("TANDEM_FORCE_TRITON", raising=False)
    paged, q = decode_inputs([9, 30], 2, 2, 16, torch.float32)
    args = (paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, 0.25)
    assert torch.equal(kernels.paged_attention_decode(q, *args), paged_attention_decode_ref(q, *args))
