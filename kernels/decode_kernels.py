"""Triton decode attention: one new query token per sequence against its paged K/V.

Rows of a program are the query heads sharing one kv head (GQA packing, padded to 16 rows for tl.dot),
so every K/V tile is loaded once per group. With SPLIT (flash-decoding) each program covers one
partition of the context and a second kernel merges the partial softmaxes, which keeps the GPU busy when
batch x kv_heads is small but contexts are long.
"""

import triton
import triton.language as tl

from kernels.attention_tiles import _attend_tile, _load_kv_tile


# Sizes that vary per batch are not specialized, so a new batch shape does not trigger a recompile.
@triton.jit(do_not_specialize=["num_parts", "stride_bt"])
def _decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    out_ptr,
    part_out_ptr,
    part_m_ptr,
    part_l_ptr,
    qk_scale,
    num_heads,
    num_parts,
    stride_qb,
    stride_qh,
    stride_ob,
    stride_oh,
    stride_bt,
    stride_blk,
    stride_tok,
    stride_head,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PARTITION: tl.constexpr,
    SPLIT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid (seq, kv_head, partition). Rows = the GROUP query heads of one kv head, padded to >= 16 for
    tl.dot. SPLIT (flash-decoding): each partition of PARTITION tokens writes a partial (out, max, sum)
    that _decode_reduce_kernel merges, so long contexts use many SMs even at batch size 1."""
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    ctx = tl.load(context_lens_ptr + seq)
    if SPLIT:
        start = tl.program_id(2) * PARTITION
        end = tl.minimum(start + PARTITION, ctx)
    else:
        start = 0
        end = ctx
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, BLOCK_D)
    g_mask = g < GROUP
    d_mask = d < HEAD_DIM
    heads = kvh * GROUP + g
    q = tl.load(
        q_ptr + seq * stride_qb + heads[:, None] * stride_qh + d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    if DOT_FP32:
        q = q.to(tl.float32)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
    table_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    head_off = kvh.to(tl.int64) * stride_head
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        valid = pos < end
        k = _load_kv_tile(
            k_cache_ptr,
            table_row,
            pos,
            valid,
            d,
            d_mask,
            stride_blk,
            stride_tok,
            head_off,
            BLOCK_SIZE,
            DOT_FP32,
        )
        v = _load_kv_tile(
            v_cache_ptr,
            table_row,
            pos,
            valid,
            d,
            d_mask,
            stride_blk,
            stride_tok,
            head_off,
            BLOCK_SIZE,
            DOT_FP32,
        )
        m_i, l_i, acc = _attend_tile(q, k, v, valid[None, :], m_i, l_i, acc, qk_scale, PRECISION)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # empty context / partition -> 0
    if SPLIT:
        idx = (seq * num_heads + heads) * num_parts + tl.program_id(2)  # partials are [B, H, parts]
        tl.store(part_m_ptr + idx, m_i, mask=g_mask)
        tl.store(part_l_ptr + idx, l_i, mask=g_mask)
        tl.store(
            part_out_ptr + idx[:, None] * HEAD_DIM + d[None, :], out, mask=g_mask[:, None] & d_mask[None, :]
        )
    else:
        tl.store(
            out_ptr + seq * stride_ob + heads[:, None] * stride_oh + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=g_mask[:, None] & d_mask[None, :],
        )


@triton.jit(do_not_specialize=["num_parts"])
def _decode_reduce_kernel(
    out_ptr,
    part_out_ptr,
    part_m_ptr,
    part_l_ptr,
    context_lens_ptr,
    num_heads,
    num_parts,
    stride_ob,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PARTITION: tl.constexpr,
    PARTS_PAD: tl.constexpr,
):
    """Grid (seq, head): merge the partitions holding tokens, each weighted by sum * 2^(max - global max)."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    n_valid = tl.cdiv(tl.load(context_lens_ptr + seq), PARTITION)
    base = (seq * num_heads + head) * num_parts
    p = tl.arange(0, PARTS_PAD)
    m = tl.load(part_m_ptr + base + p, mask=p < n_valid, other=float("-inf"))
    sums = tl.load(part_l_ptr + base + p, mask=p < n_valid, other=0.0)
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    total = tl.sum(sums * tl.math.exp2(m - m_max), 0)
    d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for i in range(0, n_valid):
        w = tl.load(part_l_ptr + base + i) * tl.math.exp2(tl.load(part_m_ptr + base + i) - m_max)
        acc += w * tl.load(part_out_ptr + (base + i) * HEAD_DIM + d, mask=d < HEAD_DIM, other=0.0)
    out = acc / tl.where(total > 0, total, 1.0)
    tl.store(
        out_ptr + seq * stride_ob + head * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM
    )
