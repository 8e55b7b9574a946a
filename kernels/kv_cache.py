"""Triton kernel that scatters new tokens' K/V into the paged cache (the store half of paged attention).

Grid: one program per (token, group of kv heads). Each program reads the token's slot once and copies a
[heads, head_dim] tile of K and of V; a padding slot (-1) turns the whole tile into masked no-ops, which
avoids data-dependent early returns and keeps the launch free of host syncs (CUDA-graph safe).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from kernels.validation import check_write

# Elements per program: large enough to amortize the slot load, small enough to stay in registers.
_TILE_ELEMS = 2048


@triton.jit
def _write_kv_kernel(
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok)  # int64: flat slot = block_id * block_size + offset
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    # Padding slot -> zero heads in range. (Folding it in as `& (slot >= 0)` would AND a tensor with a
    # scalar bool, which the CPU interpreter turns into an int32 mask it then rejects.)
    num_heads = tl.where(slot >= 0, NUM_KV_HEADS, 0)
    mask = (h[:, None] < num_heads) & (d[None, :] < HEAD_DIM)
    k = tl.load(key_ptr + tok * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
    v = tl.load(value_ptr + tok * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
    # The cache is contiguous, so a slot is a dense [NUM_KV_HEADS, HEAD_DIM] row.
    dst = slot * (NUM_KV_HEADS * HEAD_DIM) + h[:, None] * HEAD_DIM + d[None, :]
    tl.store(k_cache_ptr + dst, k, mask=mask)
    tl.store(v_cache_ptr + dst, v, mask=mask)


def write_kv_cache_triton(
    key: Tensor, value: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor
) -> None:
    """Write key/value [T, Hkv, D] into k/v_cache at slot_mapping [T] (int64, -1 = skip)."""
    check_write(key, value, k_cache, v_cache, slot_mapping)
    num_tokens = key.shape[0]
    if num_tokens == 0:
        return
    _, _, num_kv_heads, head_dim = k_cache.shape
    block_d = triton.next_power_of_2(head_dim)
    block_h = min(triton.next_power_of_2(num_kv_heads), max(1, _TILE_ELEMS // block_d))
    grid = (num_tokens, triton.cdiv(num_kv_heads, block_h))
    _write_kv_kernel[grid](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        num_warps=4 if block_h * block_d >= 1024 else 2,
        enable_fp_fusion=True,  # explicit: the default flips in triton 3.10 (and 3.9 warns about it)
    )
