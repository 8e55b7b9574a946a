"""The device side of LoRA: max_loras slots per adapted linear, which adapter sits in which slot, and the
per-token slot index of the step being run.

Slots are allocated once, when the engine starts and before the KV pool is sized (so their memory is
reserved, like the weights). A step's adapters are made resident before its forward pass: one already in
a slot is reused, a new one takes a free slot or evicts the least recently used adapter this step does not
need. The scheduler admits at most max_loras distinct adapters among running sequences, so a step never
needs more slots than there are.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

import kernels
from backends.paged.layers import ShardedLinear
from backends.paged.lora import LoraAdapter
from backends.paged.model import CausalLM

log = logging.getLogger(__name__)

ADAPTED = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@dataclass(slots=True)
class LoraBatch:
    """The running step's slot per token (int32 [T], -1: base), or None when no token uses an adapter;
    on CPU also its rows grouped by slot, found once per step rather than once per linear."""

    token_slots: torch.Tensor | None = None
    groups: kernels.SlotGroups | None = None


@dataclass(eq=False, slots=True)
class LoraLinear:
    """One linear's slots: a [slots, shards * rank, in], b [slots, out, rank] (kernels/lora_reference.py)."""

    a: torch.Tensor
    b: torch.Tensor
    shard_index: dict[str | None, int]  # shard name -> its position in the fused output
    shard_starts: tuple[int, ...]
    batch: LoraBatch  # shared by every adapted linear of the model

    def apply(self, y: torch.Tensor, x: torch.Tensor) -> None:
        slots = self.batch.token_slots
        if slots is not None:
            kernels.add_lora(y, x, self.a, self.b, slots, self.shard_starts, self.batch.groups)


class LoraSlots:
    def __init__(self, model: CausalLM, num_slots: int, max_rank: int) -> None:
        param = next(model.parameters())
        self.num_slots, self.max_rank = num_slots, max_rank
        self.batch = LoraBatch()
        self.linears: dict[str, LoraLinear] = {}
        for name, module in model.named_modules():
            if isinstance(module, ShardedLinear) and name.rsplit(".", 1)[-1] in ADAPTED:
                out, in_features = module.weight.shape
                shards = list(module.offsets)
                lora = LoraLinear(
                    a=torch.zeros(
                        num_slots, len(shards) * max_rank, in_features, dtype=param.dtype, device=param.device
                    ),
                    b=torch.zeros(num_slots, out, max_rank, dtype=param.dtype, device=param.device),
                    shard_index={shard: i for i, shard in enumerate(shards)},
                    shard_starts=tuple(module.offsets[s][0] for s in shards),
                    batch=self.batch,
                )
                module.lora = lora
                self.linears[name] = lora
        self._resident: OrderedDict[int, int] = OrderedDict()  # adapter uid -> slot, least recent first
        self._free = list(range(num_slots - 1, -1, -1))
        self.num_loads = 0
        log.info("LoRA: %d slots of rank %d (%.1f MiB)", num_slots, max_rank, self.nbytes / 2**20)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for lin in self.linears.values() for t in (lin.a, lin.b))

    def activate(self, adapters: Sequence[LoraAdapter | None]) -> list[int]:
        """Make every adapter named here resident; returns each entry's slot (-1 for the base)."""
        needed = {a.uid: a for a in adapters if a is not None}
        if len(needed) > self.num_slots:
            raise RuntimeError(f"{len(needed)} adapters in one step, only {self.num_slots} LoRA slots")
        for uid in needed:
            if uid in self._resident:
                self._resident.move_to_end(uid)
        for uid, adapter in needed.items():
            if uid not in self._resident:
                self._resident[uid] = slot = self._take_slot(needed)
                self._load(adapter, slot)
        return [-1 if a is None else self._resident[a.uid] for a in adapters]

    def _take_slot(self, needed: dict[int, LoraAdapter]) -> int:
        if self._free:
            return self._free.pop()
        victim = next(uid for uid in self._resident if uid not in needed)
        return self._resident.pop(victim)

    def _load(self, adapter: LoraAdapter, slot: int) -> None:
        """Copy the adapter's factors into the slot; what it does not target (or rank beyond its own)
        stays zero, so the slot computes exactly its delta."""
        rank = self.max_rank
        for lin in self.linears.values():
            lin.a[slot].zero_()
            lin.b[slot].zero_()
        for (module, shard), w in adapter.weights.items():
            lin = self.linears[module]
            s = lin.shard_index[shard]
            start = lin.shard_starts[s]
            r = w.a.shape[0]
            lin.a[slot, s * rank : s * rank + r].copy_(w.a, non_blocking=True)
            lin.b[slot, start : start + w.b.shape[0], :r].copy_(w.b, non_blocking=True)
        self.num_loads += 1
        log.debug("LoRA adapter %r (rank %d) loaded into slot %d", adapter.name, adapter.rank, slot)
