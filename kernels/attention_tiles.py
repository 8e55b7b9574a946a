"""Triton building blocks of the paged-attention kernels: paged K/V gather, one online-softmax step.

Scores come from tl.dot with fp32 accumulation; the softmax is base-2 with the scale (times log2 e)
folded in, and keeps a running (max, denominator, accumulator) so each K/V tile is read once.
"""

import triton
import triton.language as tl


@triton.jit
def _load_kv_tile(
    cache_ptr,
    table_row_ptr,
    pos,
    valid,
    d,
    d_mask,
    stride_blk,
    stride_tok,
    head_off,
    BLOCK_SIZE: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """Gather the [BLOCK_N, BLOCK_D] K or V tile of token positions `pos` of one sequence and kv head."""
    blk = tl.load(table_row_ptr + pos // BLOCK_SIZE, mask=valid, other=0).to(tl.int64)
    off = blk * stride_blk + (pos % BLOCK_SIZE) * stride_tok + head_off
    tile = tl.load(cache_ptr + off[:, None] + d[None, :], mask=valid[:, None] & d_mask[None, :], other=0.0)
    if DOT_FP32:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def _attend_tile(q, k, v, mask, m_i, l_i, acc, qk_scale, PRECISION: tl.constexpr):
    """One online-softmax step: fold a K/V tile into the running (max, denominator, accumulator)."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    s = tl.where(mask, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no valid key yet keeps max -inf; use 0 as its shift so exp2 gives 0, not NaN.
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_shift[:, None])
    alpha = tl.math.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc
