"""Triton batched LoRA (BGMV: one adapter gathered per token row), layouts as in kernels/lora_reference.py.

Two launches per linear: shrink h[t] = A[slot_t] @ x[t] over all shards at once (fp32, [T, shards * rank]),
then expand y[t, j] += h[t, shard(j)] . B[slot_t, j] in place. Each program reads its token's slot on the
device and masks everything for slot -1, so the launch never syncs with the host and a batch mixes any
adapters (and the base) freely. Rank is small (<= a few dozen), so both are matrix-vector products per
token: reductions in registers, no tensor cores. Per-token gathers re-read an adapter's A/B for every token
of a long prefill (from L2); grouping rows by adapter (SGMV segments with tl.dot) is the next step there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.lora_reference import check_lora

_MAX_SHARDS = 3  # q/k/v is the widest fused projection


@triton.jit
def _lora_shrink_kernel(
    x_ptr,
    a_ptr,
    slots_ptr,
    h_ptr,
    in_features,
    stride_xt,
    stride_as,
    stride_ar,
    stride_ht,
    R_TOTAL: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Grid (token, block of A rows): h[t, r] = sum_k A[slot_t, r, k] * x[t, k]; zeros for slot -1."""
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + t)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    # A base row gets no valid A rows (a scalar bool ANDed into a tensor mask trips the CPU interpreter).
    r_mask = r < tl.where(slot >= 0, R_TOTAL, 0)
    a_row = a_ptr + tl.maximum(slot, 0).to(tl.int64) * stride_as + r[:, None] * stride_ar
    acc = tl.zeros([BLOCK_R], tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < in_features
        xv = tl.load(x_ptr + t * stride_xt + k, mask=k_mask, other=0.0).to(tl.float32)
        a = tl.load(a_row + k[None, :], mask=r_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(a * xv[None, :], axis=1)
    tl.store(h_ptr + t * stride_ht + r, acc, mask=r < R_TOTAL)


@triton.jit
def _lora_expand_kernel(
    h_ptr,
    b_ptr,
    slots_ptr,
    y_ptr,
    out_features,
    start1,
    start2,
    stride_ht,
    stride_bs,
    stride_bn,
    stride_yt,
    RANK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Grid (token, block of output columns): y[t, j] += h[t, shard(j) * RANK + k] . B[slot_t, j, k]."""
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + t)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < tl.where(slot >= 0, out_features, 0)
    shard = (n >= start1).to(tl.int32) + (n >= start2).to(tl.int32)  # start = out_features: no such shard
    k = tl.arange(0, BLOCK_R)
    mask = n_mask[:, None] & (k[None, :] < RANK)
    hv = tl.load(h_ptr + t * stride_ht + shard[:, None] * RANK + k[None, :], mask=mask, other=0.0)
    b_rows = b_ptr + tl.maximum(slot, 0).to(tl.int64) * stride_bs + n[:, None] * stride_bn
    b = tl.load(b_rows + k[None, :], mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(hv * b, axis=1)
    y = tl.load(y_ptr + t * stride_yt + n, mask=n_mask, other=0.0)
    tl.store(y_ptr + t * stride_yt + n, (y.to(tl.float32) + delta).to(y_ptr.dtype.element_ty), mask=n_mask)


def lora_meta(rank: int, num_shards: int) -> dict[str, int]:
    """Tile sizes: BLOCK_R x BLOCK_K (shrink) and BLOCK_N x rank (expand) fp32 tiles of 4-8k elements."""
    block_r = min(64, triton.next_power_of_2(num_shards * rank))
    rank_pad = max(16, triton.next_power_of_2(rank))
    return dict(BLOCK_R=block_r, BLOCK_K=max(32, 4096 // block_r), BLOCK_N=max(16, 4096 // rank_pad))


def add_lora_triton(
    y: Tensor, x: Tensor, lora_a: Tensor, lora_b: Tensor, token_slots: Tensor, shard_starts: tuple[int, ...]
) -> None:
    """y[t] += the LoRA delta of token t's adapter, in place (see kernels/lora_reference.py)."""
    num_shards, rank = check_lora(y, x, lora_a, lora_b, token_slots, shard_starts)
    if num_shards > _MAX_SHARDS:
        raise ValueError(f"at most {_MAX_SHARDS} shards, got {num_shards}")
    num_tokens, out_features = y.shape
    if num_tokens == 0:
        return
    meta = lora_meta(rank, num_shards)
    r_total = num_shards * rank
    h = torch.empty(num_tokens, r_total, dtype=torch.float32, device=y.device)
    _lora_shrink_kernel[(num_tokens, triton.cdiv(r_total, meta["BLOCK_R"]))](
        x,
        lora_a,
        token_slots,
        h,
        x.shape[1],
        x.stride(0),
        lora_a.stride(0),
        lora_a.stride(1),
        h.stride(0),
        R_TOTAL=r_total,
        BLOCK_R=meta["BLOCK_R"],
        BLOCK_K=meta["BLOCK_K"],
        num_warps=4,
        enable_fp_fusion=True,  # explicit: the default flips in triton 3.10 (and 3.9 warns about it)
    )
    starts = (*shard_starts[1:], out_features, out_features)
    _lora_expand_kernel[(num_tokens, triton.cdiv(out_features, meta["BLOCK_N"]))](
        h,
        lora_b,
        token_slots,
        y,
        out_features,
        starts[0],
        starts[1],
        h.stride(0),
        lora_b.stride(0),
        lora_b.stride(1),
        y.stride(0),
        RANK=rank,
        BLOCK_N=meta["BLOCK_N"],
        BLOCK_R=max(16, triton.next_power_of_2(rank)),
        num_warps=4,
        enable_fp_fusion=True,
    )
