"""The decoder's building blocks; fused linears know how to load each of their checkpoint shards."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from backends.paged.model_config import RopeConfig

if TYPE_CHECKING:
    from backends.paged.lora_slots import LoraLinear


def copy_weight(param: torch.Tensor, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)}, checkpoint {tuple(loaded.shape)}")
    param.copy_(loaded)


class ShardedLinear(nn.Module):
    """A linear layer whose output rows are the concatenation of named checkpoint tensors.

    Fused q/k/v (shards "q", "k", "v") and gate/up (shards "gate", "up") are one matmul each; a plain
    linear is the single shard None.
    """

    def __init__(self, in_features: int, shards: Mapping[str | None, int], bias: bool = False) -> None:
        super().__init__()
        self.offsets: dict[str | None, tuple[int, int]] = {}
        start = 0
        for name, size in shards.items():
            self.offsets[name] = (start, size)
            start += size
        self.weight = nn.Parameter(torch.empty(start, in_features), requires_grad=False)
        if bias:
            self.bias = nn.Parameter(torch.empty(start), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.lora: LoraLinear | None = None  # the LoRA slots, set when the engine serves adapters

    def load_shard(self, param: torch.Tensor, loaded: torch.Tensor, shard: str | None) -> None:
        """Copy one checkpoint tensor (q, k, v, gate, up, or a whole unfused weight) into its rows."""
        start, size = self.offsets[shard]
        target = param.narrow(0, start, size)
        if target.shape != loaded.shape:
            raise ValueError(f"shard {shard!r}: expected {tuple(target.shape)}, got {tuple(loaded.shape)}")
        target.copy_(loaded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.lora is not None:
            self.lora.apply(y, x)  # in place: each token's adapter delta, if the step has any
        return y


class Embedding(nn.Module):
    """Token embedding without nn.Embedding's init (which is slow to trace on the meta device)."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(size), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same arithmetic as Hugging Face's LlamaRMSNorm: normalise in fp32, scale in the model dtype.
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope_inv_freq(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope.type == "linear":
        return inv_freq / rope.factor
    if rope.type == "llama3":
        low_wavelen = rope.original_max_position_embeddings / rope.low_freq_factor
        high_wavelen = rope.original_max_position_embeddings / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (rope.original_max_position_embeddings / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """Neox / Hugging Face rotate_half rotary embedding over a positions tensor, from a cos/sin table."""

    cos_sin: torch.Tensor  # a buffer (register_buffer below): declared so its type is known

    def __init__(self, head_dim: int, max_positions: int, rope: RopeConfig) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.rope = rope
        self.register_buffer("cos_sin", torch.empty(max_positions, 2 * head_dim), persistent=False)

    def init_table(self) -> None:
        """Fill the cos/sin table on the module's device (after the model left the meta device)."""
        device = self.cos_sin.device
        inv_freq = rope_inv_freq(self.head_dim, self.rope).to(device)
        t = torch.arange(self.max_positions, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos_sin = torch.cat((emb.cos(), emb.sin()), dim=-1)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q [T, H, D], k [T, Hkv, D]; positions [T]."""
        cos, sin = self.cos_sin[positions].to(q.dtype).unsqueeze(1).chunk(2, dim=-1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
