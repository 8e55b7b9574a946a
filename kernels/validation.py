"""Argument checks shared by the Triton launchers and the torch references.

Both paths run the same checks so that a caller bug found on a GPU box is also found by the CPU test
suite (and vice versa). Every check is metadata-only: no device sync, so it is safe inside CUDA graphs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _fail(msg: str) -> None:
    raise ValueError(msg)


def check_kv_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, int, int, int]:
    """Validate the paged cache pair; returns (num_blocks, block_size, num_kv_heads, head_dim)."""
    if k_cache.dim() != 4:
        _fail(
            "k_cache must be [num_blocks, block_size, num_kv_heads, head_dim], "
            f"got shape {tuple(k_cache.shape)}"
        )
    if v_cache.shape != k_cache.shape:
        _fail(f"v_cache shape {tuple(v_cache.shape)} != k_cache shape {tuple(k_cache.shape)}")
    if k_cache.dtype not in CACHE_DTYPES:
        _fail(f"kv cache dtype must be one of {CACHE_DTYPES}, got {k_cache.dtype}")
    if v_cache.dtype != k_cache.dtype:
        _fail(f"v_cache dtype {v_cache.dtype} != k_cache dtype {k_cache.dtype}")
    if v_cache.device != k_cache.device:
        _fail(f"v_cache on {v_cache.device} but k_cache on {k_cache.device}")
    # Slots are addressed as block_id * block_size + offset, which assumes the dense layout.
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        _fail("k_cache and v_cache must be contiguous")
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    if min(num_blocks, block_size, num_kv_heads, head_dim) <= 0:
        _fail(f"kv cache has an empty dimension: {tuple(k_cache.shape)}")
    return num_blocks, block_size, num_kv_heads, head_dim


def _check_index(t: torch.Tensor, name: str, dim: int, dtype: torch.dtype, device: torch.device) -> None:
    if t.dim() != dim:
        _fail(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if t.dtype != dtype:
        _fail(f"{name} must be {dtype}, got {t.dtype}")
    if t.device != device:
        _fail(f"{name} on {t.device} but kv cache on {device}")


def _check_tokens(t: torch.Tensor, name: str, heads: int | None, head_dim: int, cache: torch.Tensor) -> None:
    """A [tokens, heads, head_dim] activation that must match the cache's dtype, device and head_dim."""
    if t.dim() != 3:
        _fail(f"{name} must be [tokens, heads, head_dim], got shape {tuple(t.shape)}")
    if heads is not None and t.shape[1] != heads:
        _fail(f"{name} has {t.shape[1]} heads, kv cache has {heads}")
    if t.shape[2] != head_dim:
        _fail(f"{name} head_dim {t.shape[2]} != kv cache head_dim {head_dim}")
    if t.dtype != cache.dtype:
        _fail(f"{name} dtype {t.dtype} != kv cache dtype {cache.dtype}")
    if t.device != cache.device:
        _fail(f"{name} on {t.device} but kv cache on {cache.device}")
    # Kernels load head rows as contiguous vectors; token/head strides may be arbitrary (e.g. a qkv split).
    if t.shape[2] > 1 and t.stride(2) != 1:
        _fail(f"{name} must have a contiguous last (head_dim) dimension, got strides {t.stride()}")


def _check_scale(scale: float) -> None:
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        _fail(f"scale must be a positive finite float, got {scale!r}")


def check_write(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    _, _, num_kv_heads, head_dim = check_kv_cache(k_cache, v_cache)
    _check_tokens(key, "key", num_kv_heads, head_dim, k_cache)
    _check_tokens(value, "value", num_kv_heads, head_dim, k_cache)
    if value.shape[0] != key.shape[0]:
        _fail(f"value has {value.shape[0]} tokens, key has {key.shape[0]}")
    _check_index(slot_mapping, "slot_mapping", 1, torch.int64, k_cache.device)
    if slot_mapping.shape[0] != key.shape[0]:
        _fail(f"slot_mapping has {slot_mapping.shape[0]} entries, key has {key.shape[0]} tokens")


def check_attention_common(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> tuple[int, int]:
    """Checks shared by decode and prefill; returns (num_seqs, num_queries_per_kv)."""
    _, _, num_kv_heads, head_dim = check_kv_cache(k_cache, v_cache)
    _check_tokens(query, "query", None, head_dim, k_cache)
    if query.shape[1] % num_kv_heads != 0:
        _fail(f"num_heads {query.shape[1]} is not a multiple of num_kv_heads {num_kv_heads}")
    _check_index(block_tables, "block_tables", 2, torch.int32, k_cache.device)
    _check_index(context_lens, "context_lens", 1, torch.int32, k_cache.device)
    num_seqs = block_tables.shape[0]
    if context_lens.shape[0] != num_seqs:
        _fail(f"context_lens has {context_lens.shape[0]} entries, block_tables has {num_seqs} rows")
    _check_scale(scale)
    return num_seqs, query.shape[1] // num_kv_heads


def check_decode(
    query: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, context_lens: Tensor, scale: float
) -> tuple[int, int]:
    num_seqs, group = check_attention_common(query, k_cache, v_cache, block_tables, context_lens, scale)
    if query.shape[0] != num_seqs:
        _fail(f"decode query has {query.shape[0]} rows but there are {num_seqs} sequences (one token each)")
    return num_seqs, group


def check_prefill(
    query: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    cu_query_lens: Tensor,
    context_lens: Tensor,
    scale: float,
) -> tuple[int, int]:
    num_seqs, group = check_attention_common(query, k_cache, v_cache, block_tables, context_lens, scale)
    _check_index(cu_query_lens, "cu_query_lens", 1, torch.int32, k_cache.device)
    if cu_query_lens.shape[0] != num_seqs + 1:
        _fail(f"cu_query_lens must have num_seqs + 1 = {num_seqs + 1} entries, got {cu_query_lens.shape[0]}")
    # cu_query_lens[-1] == query.shape[0] is not checked: it would need a device sync.
    return num_seqs, group
