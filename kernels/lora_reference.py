"""The batched LoRA matmul (Punica's shrink/expand) in pure torch: kernels/lora.py's oracle, the CPU path.

Every token row t of a flat batch carries the slot of its adapter (token_slots[t]; -1: the base model, no
delta). One linear's adapters live stacked in slots:

    lora_a [num_slots, num_shards * rank, in]   shard s's A in rows s*rank : (s+1)*rank
    lora_b [num_slots, out, rank]               the output columns of shard s use shard s's A rows

so a fused projection (q/k/v, gate/up: shards starting at output columns shard_starts) takes one shrink for
all its shards and one expand: y[t, cols of s] += (x[t] @ A_s[slot].T) @ B[slot, cols of s].T. The scaling
(alpha / r, times the adapter's scale) is folded into B when an adapter is loaded; ranks below `rank` and
modules an adapter does not target are zeros.

The reference groups rows by slot (one matmul per adapter present, the SGMV view); it syncs with the
device (unique, nonzero), so it is meant for CPU and tests.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _fail(msg: str) -> None:
    raise ValueError(msg)


def check_lora(
    y: Tensor, x: Tensor, lora_a: Tensor, lora_b: Tensor, token_slots: Tensor, shard_starts: tuple[int, ...]
) -> tuple[int, int]:
    """Metadata-only checks shared by the reference and the Triton launcher; returns (num_shards, rank)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        _fail(f"x [T, in] and y [T, out] must share T, got {tuple(x.shape)} and {tuple(y.shape)}")
    if lora_a.dim() != 3 or lora_b.dim() != 3 or lora_a.shape[0] != lora_b.shape[0]:
        _fail(
            "lora_a must be [slots, shards * rank, in] and lora_b [slots, out, rank], "
            f"got {tuple(lora_a.shape)} and {tuple(lora_b.shape)}"
        )
    num_shards, rank = len(shard_starts), lora_b.shape[2]
    if lora_a.shape[1] != num_shards * rank or lora_a.shape[2] != x.shape[1]:
        _fail(
            f"lora_a {tuple(lora_a.shape)} does not match {num_shards} shards of rank {rank} "
            f"over {x.shape[1]} input features"
        )
    if lora_b.shape[1] != y.shape[1]:
        _fail(f"lora_b has {lora_b.shape[1]} output rows, y has {y.shape[1]} columns")
    if not shard_starts or shard_starts[0] != 0 or list(shard_starts) != sorted(set(shard_starts)):
        _fail(f"shard_starts must increase from 0, got {shard_starts}")
    if shard_starts[-1] >= y.shape[1]:
        _fail(f"shard_starts {shard_starts} run past the {y.shape[1]} output columns")
    if token_slots.dim() != 1 or token_slots.shape[0] != x.shape[0] or token_slots.dtype != torch.int32:
        _fail(
            f"token_slots must be int32 [T={x.shape[0]}], got {token_slots.dtype} {tuple(token_slots.shape)}"
        )
    for name, t in (("x", x), ("lora_a", lora_a), ("lora_b", lora_b), ("token_slots", token_slots)):
        if t.device != y.device:
            _fail(f"{name} on {t.device} but y on {y.device}")
    if not (x.dtype == y.dtype == lora_a.dtype == lora_b.dtype):
        _fail(f"dtypes differ: x {x.dtype}, y {y.dtype}, lora_a {lora_a.dtype}, lora_b {lora_b.dtype}")
    if not (lora_a.is_contiguous() and lora_b.is_contiguous()):
        _fail("lora_a and lora_b must be contiguous")
    if x.stride(1) != 1 or y.stride(1) != 1:
        _fail("x and y must be contiguous along their last dimension")
    return num_shards, rank


# Rows of each adapter slot present in a batch: (slot, row indices), or (slot, None) when every row has it.
SlotGroups = list[tuple[int, Tensor | None]]


def slot_groups(token_slots: Tensor) -> SlotGroups:
    """The batch's rows grouped by slot (base rows left out). The engine computes this once per step on
    the host, so each linear's reference call does not search for them again."""
    groups: SlotGroups = []
    for slot in token_slots.unique().tolist():
        if slot >= 0:
            rows = (token_slots == slot).nonzero().squeeze(1)
            groups.append((slot, None if rows.numel() == token_slots.numel() else rows))
    return groups


def add_lora_ref(
    y: Tensor,
    x: Tensor,
    lora_a: Tensor,
    lora_b: Tensor,
    token_slots: Tensor,
    shard_starts: tuple[int, ...],
    groups: SlotGroups | None = None,
) -> None:
    """y[t] += the LoRA delta of token t's adapter (in place; rows with slot -1 are left as they are).
    `groups`: slot_groups(token_slots), when the caller has it already."""
    num_shards, rank = check_lora(y, x, lora_a, lora_b, token_slots, shard_starts)
    bounds = (*shard_starts, y.shape[1])
    for slot, rows in slot_groups(token_slots) if groups is None else groups:
        xs = x if rows is None else x.index_select(0, rows)
        h = xs.float() @ lora_a[slot].float().T  # shrink: [n, shards * rank]
        delta = torch.cat(  # expand, shard by shard: [n, out]
            [
                h[:, s * rank : (s + 1) * rank] @ lora_b[slot, bounds[s] : bounds[s + 1]].float().T
                for s in range(num_shards)
            ],
            dim=1,
        )
        if rows is None:
            y.copy_(y.float() + delta)
        else:
            y.index_copy_(0, rows, (y.index_select(0, rows).float() + delta).to(y.dtype))
