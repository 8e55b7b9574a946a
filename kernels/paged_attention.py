"""Launchers for the paged-attention Triton kernels: validation, tile-size choice, grids.

Decode: grid (seq, kv_head[, partition]) with optional flash-decoding split + reduce for long contexts.
Prefill: grid (q tile, kv_head) over packed variable-length chunks; tiles find their sequence on device.
Launches read only tensor metadata (no host sync), so they can be captured in CUDA graphs.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
from torch import Tensor

from kernels.decode_kernels import _decode_kernel, _decode_reduce_kernel
from kernels.prefill_kernels import _prefill_kernel
from kernels.validation import check_decode, check_prefill

_LOG2E = 1.4426950408889634


def _dot_config(dtype: torch.dtype) -> dict:
    """fp32 caches get exact ieee dots (tf32 would cost them ~3 decimal digits). The CPU interpreter
    (triton 3.9) multiplies bf16 operands as raw uint16 bits, so DOT_FP32 upcasts them there only."""
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    return dict(
        DOT_FP32=interpreting and dtype == torch.bfloat16,
        PRECISION="ieee" if dtype == torch.float32 else "tf32",
    )


def decode_meta(
    dtype: torch.dtype,
    group: int,
    head_dim: int,
    block_size: int,
    *,
    split: bool,
    partition_size: int = 512,
    block_n: int | None = None,
) -> dict:
    """Compile-time parameters of _decode_kernel. Sizes were checked spill-free by compiling for sm_90:
    fp32 dots run on FMA units (ieee), which needs smaller K/V tiles and 8 warps."""
    fp32 = dtype == torch.float32
    block_n = block_n or (32 if fp32 else 64)
    if partition_size % block_n or block_n < 16 or block_n & (block_n - 1):
        raise ValueError(
            f"block_n {block_n} must be a power of two >= 16 dividing partition_size {partition_size}"
        )
    return dict(
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_SIZE=block_size,
        BLOCK_N=block_n,
        PARTITION=partition_size,
        SPLIT=split,
        num_warps=8 if fp32 else 4,
        num_stages=2,
        enable_fp_fusion=True,  # explicit: the default flips in triton 3.10 (and 3.9 warns about it)
        **_dot_config(dtype),
    )


def prefill_meta(
    dtype: torch.dtype,
    group: int,
    head_dim: int,
    block_size: int,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> dict:
    """Compile-time parameters of _prefill_kernel. 64x64 tiles (wgmma-sized) keep Q + double-buffered
    K/V spill-free up to D=128 in 16-bit; D=256 uses 32x32 and fp32 (FMA dots) 16x16 (checked on sm_90)."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    default = 16 if dtype == torch.float32 else (32 if block_d > 128 else 64)
    group_pad = triton.next_power_of_2(group)
    block_m = max(block_m or default, group_pad, 16)  # tl.dot needs >= 16 rows
    return dict(
        GROUP=group,
        GROUP_PAD=group_pad,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_SIZE=block_size,
        BLOCK_Q=block_m // group_pad,
        BLOCK_N=block_n or default,
        num_warps=4,
        num_stages=2,
        enable_fp_fusion=True,
        **_dot_config(dtype),
    )


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def paged_attention_decode_triton(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float,
    *,
    split: bool | None = None,
    partition_size: int = 512,
    block_n: int | None = None,
) -> Tensor:
    """query [B, H, D] -> [B, H, D]. split=None picks flash-decoding when the (seq, kv_head) grid alone
    would leave SMs idle and the block table can span more than one partition."""
    num_seqs, group = check_decode(query, k_cache, v_cache, block_tables, context_lens, scale)
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    # Upper bound on context length from static shapes only (no device sync).
    num_parts = triton.cdiv(block_tables.shape[1] * block_size, partition_size)
    if split is None:
        split = num_parts > 1 and num_seqs * num_kv_heads < 2 * _sm_count(query.device)
    num_parts = num_parts if split else 1
    meta = decode_meta(
        k_cache.dtype,
        group,
        head_dim,
        block_size,
        split=split,
        partition_size=partition_size,
        block_n=block_n,
    )
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_seqs == 0:
        return out
    num_heads = query.shape[1]
    if split:
        part_out = torch.empty(
            (num_seqs, num_heads, num_parts, head_dim), dtype=torch.float32, device=query.device
        )
        part_m = torch.empty((num_seqs, num_heads, num_parts), dtype=torch.float32, device=query.device)
        part_l = torch.empty_like(part_m)
    else:
        part_out = part_m = part_l = out  # unused placeholders
    _decode_kernel[(num_seqs, num_kv_heads, num_parts)](
        query,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        out,
        part_out,
        part_m,
        part_l,
        scale * _LOG2E,
        num_heads,
        num_parts,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        block_tables.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        **meta,
    )
    if split:
        _decode_reduce_kernel[(num_seqs, num_heads)](
            out,
            part_out,
            part_m,
            part_l,
            context_lens,
            num_heads,
            num_parts,
            out.stride(0),
            out.stride(1),
            HEAD_DIM=head_dim,
            BLOCK_D=meta["BLOCK_D"],
            PARTITION=partition_size,
            PARTS_PAD=triton.next_power_of_2(num_parts),
            num_warps=4 if meta["BLOCK_D"] >= 128 else 2,
            enable_fp_fusion=True,
        )
    return out


def paged_attention_prefill_triton(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    cu_query_lens: Tensor,
    context_lens: Tensor,
    scale: float,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> Tensor:
    """query [T, H, D] packed by cu_query_lens -> [T, H, D]. Rows past cu_query_lens[-1] stay unwritten."""
    num_seqs, group = check_prefill(query, k_cache, v_cache, block_tables, cu_query_lens, context_lens, scale)
    _, block_size, num_kv_heads, head_dim = k_cache.shape
    meta = prefill_meta(k_cache.dtype, group, head_dim, block_size, block_m=block_m, block_n=block_n)
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    if num_seqs == 0 or query.shape[0] == 0:
        return out
    # Sequence b needs cdiv(q_len, BLOCK_Q) tiles and _find_seq's bound grants it
    # floor((cu[b] + q_len) / BLOCK_Q) - floor(cu[b] / BLOCK_Q) + 1 >= that, so this grid always suffices.
    grid = (query.shape[0] // meta["BLOCK_Q"] + num_seqs, num_kv_heads)
    _prefill_kernel[grid](
        query,
        k_cache,
        v_cache,
        block_tables,
        cu_query_lens,
        context_lens,
        out,
        scale * _LOG2E,
        num_seqs,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        block_tables.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        **meta,
    )
    return out
