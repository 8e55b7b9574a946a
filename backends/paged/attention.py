"""Paged attention over one flat batch: decode tokens first, then packed prefill chunks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import kernels


@dataclass(slots=True)
class AttentionMetadata:
    """Where each token of the flat batch reads and writes the paged KV cache (all tensors on device).

    Tokens [0, num_decode_tokens) are one-token chunks (decodes, or a prefill's last token) handled by the
    decode kernel; the rest are prefill chunks, sequence b owning rows cu_query_lens[b]:cu_query_lens[b+1]
    of that part. context_lens count cached tokens including this step's.
    """

    slot_mapping: torch.Tensor  # [T] int64
    num_decode_tokens: int
    decode_block_tables: torch.Tensor  # [Bd, max_blocks] int32
    decode_context_lens: torch.Tensor  # [Bd] int32
    prefill_block_tables: torch.Tensor  # [Bp, max_blocks] int32
    prefill_cu_query_lens: torch.Tensor  # [Bp + 1] int32
    prefill_context_lens: torch.Tensor  # [Bp] int32

    @property
    def num_prefills(self) -> int:
        return self.prefill_context_lens.shape[0]


class PagedAttention(nn.Module):
    """Stores this step's K/V into the layer's cache, then attends over the cache."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        # Views into the model runner's pool, [num_blocks, block_size, num_kv_heads, head_dim] each.
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """q [T, H, D], k/v [T, Hkv, D] -> [T, H, D]."""
        kernels.write_kv_cache(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        nd = meta.num_decode_tokens
        if meta.num_prefills == 0:
            return kernels.paged_attention_decode(
                q, self.k_cache, self.v_cache, meta.decode_block_tables, meta.decode_context_lens, self.scale
            )
        prefill = kernels.paged_attention_prefill(
            q[nd:],
            self.k_cache,
            self.v_cache,
            meta.prefill_block_tables,
            meta.prefill_cu_query_lens,
            meta.prefill_context_lens,
            self.scale,
        )
        if nd == 0:
            return prefill
        decode = kernels.paged_attention_decode(
            q[:nd], self.k_cache, self.v_cache, meta.decode_block_tables, meta.decode_context_lens, self.scale
        )
        return torch.cat((decode, prefill), dim=0)
