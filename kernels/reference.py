"""Pure-torch paged-KV kernels: the correctness oracle for the Triton kernels and the engine's CPU path.

They gather each sequence's blocks into a dense K/V and run ordinary matmul/SDPA attention in fp32, so
they are easy to audit yet vectorized (no per-token Python loops). Unlike the Triton launchers they may
sync with the device (``.tolist()``, boolean indexing): they are only meant to run on CPU or in tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.validation import check_decode, check_prefill, check_write


def write_kv_cache_ref(
    key: Tensor, value: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor
) -> None:
    """Scatter key/value[t] into flat slot slot_mapping[t] of the caches; slot -1 marks padding to skip."""
    check_write(key, value, k_cache, v_cache, slot_mapping)
    _, _, num_kv_heads, head_dim = k_cache.shape
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    # The cache is contiguous (checked), so [blocks, block_size] flattens to the slot index.
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, key[valid])
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, value[valid])


def _gather_blocks(cache: Tensor, tables: Tensor, num_tokens: int) -> Tensor:
    """Dense [..., num_tokens, Hkv, D] view of the first num_tokens positions addressed by tables [..., n]."""
    block_size = cache.shape[1]
    num_blocks = -(-num_tokens // block_size)
    if num_blocks > tables.shape[-1]:
        raise ValueError(
            f"{num_tokens} tokens need {num_blocks} blocks, block_tables has {tables.shape[-1]} columns"
        )
    # Columns past a sequence's own blocks may hold padding (e.g. -1); clamp so the gather stays in
    # bounds, the positions they cover are masked out by the caller.
    ids = tables[..., :num_blocks].long().clamp(0, cache.shape[0] - 1)
    dense = cache[ids]  # [..., num_blocks, block_size, Hkv, D]
    dense = dense.reshape(*ids.shape[:-1], num_blocks * block_size, *cache.shape[2:])
    return dense[..., :num_tokens, :, :]


def paged_attention_decode_ref(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float,
) -> Tensor:
    """One query token per sequence attending to cache positions [0, context_len). Empty context -> 0."""
    num_seqs, group = check_decode(query, k_cache, v_cache, block_tables, context_lens, scale)
    _, _, num_kv_heads, head_dim = k_cache.shape
    max_len = int(context_lens.max()) if num_seqs else 0
    if max_len == 0:
        return torch.zeros_like(query)
    k = _gather_blocks(k_cache, block_tables, max_len).float()  # [B, L, Hkv, D]
    v = _gather_blocks(v_cache, block_tables, max_len).float()
    # GQA without repeating K/V: query head h uses kv head h // group, i.e. view heads as [Hkv, group].
    q = query.float().reshape(num_seqs, num_kv_heads, group, head_dim)
    scores = torch.matmul(q, k.permute(0, 2, 3, 1)) * scale  # [B, Hkv, group, L]
    valid = torch.arange(max_len, device=query.device)[None, :] < context_lens[:, None]  # [B, L]
    scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # all-masked rows (context 0) -> zeros
    out = torch.matmul(probs, v.permute(0, 2, 1, 3))  # [B, Hkv, group, D]
    return out.reshape(num_seqs, num_kv_heads * group, head_dim).to(query.dtype)


def paged_attention_prefill_ref(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    cu_query_lens: Tensor,
    context_lens: Tensor,
    scale: float,
) -> Tensor:
    """Packed variable-length causal attention over a (possibly cached) prefix plus the new chunk.

    Sequence b owns query rows cu_query_lens[b]:cu_query_lens[b+1]; its row i sits at position
    context_lens[b] - q_len + i and sees cache positions <= that. Rows past cu_query_lens[-1] are zero.
    """
    num_seqs, group = check_prefill(query, k_cache, v_cache, block_tables, cu_query_lens, context_lens, scale)
    out = torch.zeros_like(query)
    cu = cu_query_lens.tolist()
    ctx = context_lens.tolist()
    # One SDPA call per sequence (not per token): padding all chunks to a common length would waste
    # compute on mixed batches (one long prefill next to many 1-token chunks).
    for b in range(num_seqs):
        start, end = cu[b], cu[b + 1]
        q_len, kv_len = end - start, ctx[b]
        if q_len <= 0:
            continue
        if q_len > kv_len:
            raise ValueError(f"sequence {b}: {q_len} query tokens but context_len is only {kv_len}")
        k = _gather_blocks(k_cache, block_tables[b], kv_len).float().transpose(0, 1)  # [Hkv, L, D]
        v = _gather_blocks(v_cache, block_tables[b], kv_len).float().transpose(0, 1)
        q = query[start:end].float().transpose(0, 1)  # [H, q_len, D]
        # Causal with an offset: the chunk is the last q_len positions of the context.
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=group > 1)
        out[start:end] = o.transpose(0, 1).to(query.dtype)
    return out
