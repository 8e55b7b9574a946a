"""Paged-KV attention kernels (the engine's only entry points into the cache) and the batched LoRA matmul.

Each function dispatches to the Triton kernel when the tensors live on CUDA (or TANDEM_FORCE_TRITON=1,
which tests combine with TRITON_INTERPRET=1 to run the kernels on CPU), else to the pure-torch reference.
Triton modules are imported lazily so a torch-only install (CPU serving, CI) still gets the references.

Cache layout per layer: k_cache / v_cache [num_blocks, block_size, num_kv_heads, head_dim];
a token's slot is block_id * block_size + offset.
"""

from __future__ import annotations

import importlib.util
import os

from torch import Tensor

from kernels.lora_reference import SlotGroups, add_lora_ref, slot_groups
from kernels.reference import paged_attention_decode_ref, paged_attention_prefill_ref, write_kv_cache_ref

__all__ = [
    "SlotGroups",
    "add_lora",
    "add_lora_ref",
    "paged_attention_decode",
    "paged_attention_decode_ref",
    "paged_attention_prefill",
    "paged_attention_prefill_ref",
    "slot_groups",
    "triton_available",
    "write_kv_cache",
    "write_kv_cache_ref",
]


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _use_triton(cache: Tensor) -> bool:
    # Read per call (not at import) so tests can flip it; the lookup costs well under a microsecond.
    return cache.is_cuda or os.environ.get("TANDEM_FORCE_TRITON") == "1"


def write_kv_cache(
    key: Tensor, value: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor
) -> None:
    """Store key/value [T, Hkv, D] at flat slots slot_mapping [T] (int64; -1 = padding, skipped)."""
    if _use_triton(k_cache):
        from kernels.kv_cache import write_kv_cache_triton

        write_kv_cache_triton(key, value, k_cache, v_cache, slot_mapping)
    else:
        write_kv_cache_ref(key, value, k_cache, v_cache, slot_mapping)


def paged_attention_decode(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    scale: float,
) -> Tensor:
    """query [B, H, D], one new token per sequence (its K/V already written), attending to positions
    [0, context_lens[b]). block_tables [B, max_blocks] int32, context_lens [B] int32. Returns [B, H, D]."""
    if _use_triton(k_cache):
        from kernels.paged_attention import paged_attention_decode_triton

        return paged_attention_decode_triton(query, k_cache, v_cache, block_tables, context_lens, scale)
    return paged_attention_decode_ref(query, k_cache, v_cache, block_tables, context_lens, scale)


def paged_attention_prefill(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    cu_query_lens: Tensor,
    context_lens: Tensor,
    scale: float,
) -> Tensor:
    """Packed chunks query [T, H, D]: sequence b owns rows cu_query_lens[b]:cu_query_lens[b+1] (int32,
    [B+1]); context_lens[b] counts b's cached tokens including this chunk (already written). Row i of b
    sits at position context_lens[b] - q_len + i and attends causally. Returns [T, H, D]."""
    if _use_triton(k_cache):
        from kernels.paged_attention import paged_attention_prefill_triton

        return paged_attention_prefill_triton(
            query, k_cache, v_cache, block_tables, cu_query_lens, context_lens, scale
        )
    return paged_attention_prefill_ref(
        query, k_cache, v_cache, block_tables, cu_query_lens, context_lens, scale
    )


def add_lora(
    y: Tensor,
    x: Tensor,
    lora_a: Tensor,
    lora_b: Tensor,
    token_slots: Tensor,
    shard_starts: tuple[int, ...],
    groups: SlotGroups | None = None,
) -> None:
    """Batched LoRA, in place: y[t] += x[t]'s delta under the adapter in slot token_slots[t] (-1: none).
    lora_a [slots, shards * rank, in], lora_b [slots, out, rank]; see kernels/lora_reference.py.
    `groups` (slot_groups(token_slots), precomputed) only spares the reference its search; Triton reads
    the slots on the device."""
    if _use_triton(y):
        from kernels.lora import add_lora_triton

        add_lora_triton(y, x, lora_a, lora_b, token_slots, shard_starts)
    else:
        add_lora_ref(y, x, lora_a, lora_b, token_slots, shard_starts, groups)
