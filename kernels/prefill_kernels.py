"""Triton prefill attention over packed variable-length chunks (chunked prefill over a cached prefix).

A program owns BLOCK_Q tokens x all query heads of one kv head (GQA packing); the chunk is the last
q_len positions of its sequence's context, so causal masking is an offset comparison. The grid is an
upper bound on the number of q tiles computed from shapes alone; each program finds its sequence by
binary search over cu_query_lens on device, so the launch never syncs with the host.
"""

import triton
import triton.language as tl

from kernels.attention_tiles import _attend_tile, _load_kv_tile


@triton.jit
def _find_seq(cu_q_ptr, tile, num_seqs, BLOCK_Q: tl.constexpr):
    """Binary search for the sequence owning q tile `tile`. Sequence b's tiles start at
    cu_q[b] // BLOCK_Q + b: monotone in b, and the host can size the grid without reading cu_q."""
    lo: tl.int32 = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(cu_q_ptr + mid) // BLOCK_Q + mid <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit(do_not_specialize=["num_seqs", "stride_bt"])
def _prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    cu_q_ptr,
    context_lens_ptr,
    out_ptr,
    qk_scale,
    num_seqs,
    stride_qt,
    stride_qh,
    stride_ot,
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
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid (q tile, kv_head). Rows = BLOCK_Q tokens x GROUP_PAD heads of one sequence's chunk; the chunk
    is the last q_len positions of the context, so row token i sees keys <= context_len - q_len + i.
    Surplus tiles (the grid is an upper bound) get an empty KV loop and fully masked stores."""
    # Launch the last (longest, most causal keys) tiles first so short ones fill the tail of the wave.
    tile = tl.num_programs(0) - 1 - tl.program_id(0)
    kvh = tl.program_id(1)
    seq = _find_seq(cu_q_ptr, tile, num_seqs, BLOCK_Q)
    q_start = tl.load(cu_q_ptr + seq)
    q_len = tl.load(cu_q_ptr + seq + 1) - q_start
    ctx = tl.load(context_lens_ptr + seq)
    local = tile - (q_start // BLOCK_Q + seq)
    r = tl.arange(0, BLOCK_Q * GROUP_PAD)
    tok = local * BLOCK_Q + r // GROUP_PAD
    g = r % GROUP_PAD
    row_valid = (tok < q_len) & (g < GROUP)
    heads = kvh * GROUP + g
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    row_tok = (q_start + tok).to(tl.int64)
    q = tl.load(
        q_ptr + row_tok[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :],
        mask=row_valid[:, None] & d_mask[None, :],
        other=0.0,
    )
    if DOT_FP32:
        q = q.to(tl.float32)
    q_pos = ctx - q_len + tok
    # Keys past the tile's last query position are causally masked for every row: stop there.
    kv_end = tl.minimum(ctx, ctx - q_len + (local + 1) * BLOCK_Q)
    kv_end = tl.where(local * BLOCK_Q < q_len, kv_end, 0)
    m_i = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_Q * GROUP_PAD], tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_PAD, BLOCK_D], tl.float32)
    table_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    head_off = kvh.to(tl.int64) * stride_head
    for n0 in range(0, kv_end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        valid = pos < kv_end
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
        mask = valid[None, :] & (pos[None, :] <= q_pos[:, None])
        m_i, l_i, acc = _attend_tile(q, k, v, mask, m_i, l_i, acc, qk_scale, PRECISION)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr + row_tok[:, None] * stride_ot + heads[:, None] * stride_oh + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_valid[:, None] & d_mask[None, :],
    )
