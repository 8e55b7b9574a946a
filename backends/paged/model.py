"""Llama-family decoder (Llama 2/3, Mistral, Qwen2) in the engine's layout: fused qkv and gate_up."""

from __future__ import annotations

import torch
from torch import nn

from backends.paged.attention import AttentionMetadata, PagedAttention
from backends.paged.layers import (
    Embedding,
    RMSNorm,
    RotaryEmbedding,
    ShardedLinear,
    copy_weight,
    silu_and_mul,
)
from backends.paged.model_config import ModelConfig

# Checkpoint name fragment -> (our fused parameter's fragment, shard name).
FUSED_SHARDS: dict[str, tuple[str, str]] = {
    ".q_proj.": (".qkv_proj.", "q"),
    ".k_proj.": (".qkv_proj.", "k"),
    ".v_proj.": (".qkv_proj.", "v"),
    ".gate_proj.": (".gate_up_proj.", "gate"),
    ".up_proj.": (".gate_up_proj.", "up"),
}


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = ShardedLinear(
            cfg.hidden_size, {"q": q_size, "k": kv_size, "v": kv_size}, cfg.qkv_bias
        )
        self.o_proj = ShardedLinear(q_size, {None: cfg.hidden_size}, cfg.o_bias)
        self.attn = PagedAttention(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        self.rotary = rotary  # shared by all layers, not owned

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        t = x.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split((q_size, kv_size, kv_size), dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(positions, q, k)
        out = self.attn(q, k, v.reshape(t, self.num_kv_heads, self.head_dim), meta)
        return self.o_proj(out.reshape(t, q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        size = cfg.intermediate_size
        self.gate_up_proj = ShardedLinear(cfg.hidden_size, {"gate": size, "up": size})
        self.down_proj = ShardedLinear(size, {None: cfg.hidden_size})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, rotary)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.self_attn(positions, self.input_layernorm(x), meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_model_len, cfg.rope)
        self.layers = nn.ModuleList(DecoderLayer(cfg, self.rotary) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(positions, x, meta)
        return self.norm(x)


class CausalLM(nn.Module):
    """Parameter names follow Hugging Face's, with q/k/v and gate/up fused (see FUSED_SHARDS)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = DecoderModel(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = ShardedLinear(cfg.hidden_size, {None: cfg.vocab_size})

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """Hidden states [T, hidden] of a flat batch of tokens."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits [N, vocab] of the selected hidden states (one per sampling sequence)."""
        weight = self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
        return torch.nn.functional.linear(hidden, weight).float()

    def attention_layers(self) -> list[PagedAttention]:
        """In layer order (modules() walks them as registered)."""
        return [module for module in self.modules() if isinstance(module, PagedAttention)]

    def init_buffers(self) -> None:
        """Compute non-persistent buffers once the parameters live on their device."""
        self.model.rotary.init_table()

    def load_weight(self, name: str, tensor: torch.Tensor) -> str | None:
        """Copy one checkpoint tensor into its (possibly fused) parameter; returns what it filled.

        None: the tensor is not ours to load (rotary caches, the tied lm_head's duplicate).
        """
        if "rotary_emb." in name or (self.config.tie_word_embeddings and name == "lm_head.weight"):
            return None
        shard: str | None = None
        for fragment, (fused, shard_name) in FUSED_SHARDS.items():
            if fragment in name:
                name, shard = name.replace(fragment, fused), shard_name
                break
        module_name, _, param_name = name.rpartition(".")
        try:
            module = self.get_submodule(module_name)
            param = getattr(module, param_name)
        except AttributeError:
            raise KeyError(f"checkpoint tensor {name!r} has no parameter in the model") from None
        if not isinstance(param, torch.nn.Parameter):
            raise KeyError(f"checkpoint tensor {name!r} has no parameter in the model")
        if isinstance(module, ShardedLinear):
            module.load_shard(param.data, tensor, shard)
        else:
            copy_weight(param.data, tensor)
        return name if shard is None else f"{name}#{shard}"
