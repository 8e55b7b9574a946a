"""The paged engine's limits, validated once. Imports no torch: the gateway checks its YAML with it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DType = Literal["auto", "float32", "bfloat16", "float16"]


class EngineConfig(BaseModel):
    """Everything that sizes or limits the engine; the engine derives the rest from the checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_num_seqs: int = Field(256, ge=1, description="most sequences in one step's batch")
    max_num_batched_tokens: int = Field(8192, ge=1, description="token budget of one step")
    block_size: int = Field(16, ge=1, le=1024, description="tokens per KV-cache block")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    enable_prefix_caching: bool = True
    dtype: DType = "auto"  # auto: bfloat16 on CUDA when supported (else float16), float32 on CPU
    device: str = "auto"  # auto: cuda when available, else cpu
    num_kv_blocks: int | None = Field(None, ge=1, description="override of the KV pool size")
    cpu_kv_cache_gib: float = Field(
        1.0, gt=0.0, description="KV pool size on CPU, which has no free-memory probe"
    )
    max_model_len: int | None = Field(None, ge=2, description="default: from the checkpoint")
    max_waiting_requests: int = Field(1024, ge=1, description="bounded queue; beyond it requests are refused")
    long_prefill_chunk: int | None = Field(None, ge=1, description="per-sequence prefill chunk cap per step")
    # LoRA: device slots for this many adapters at once (0: no LoRA, nothing reserved); more adapters may be
    # loaded, they swap into the slots least recently used first. The slots' memory is taken before the KV
    # pool is sized.
    max_loras: int = Field(0, ge=0, le=256, description="resident LoRA adapters (0: LoRA off)")
    max_lora_rank: int = Field(16, ge=1, le=512, description="the largest adapter rank the slots hold")

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.long_prefill_chunk is not None and self.long_prefill_chunk > self.max_num_batched_tokens:
            raise ValueError("long_prefill_chunk cannot exceed max_num_batched_tokens")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', not {self.device!r}")
        return self

    @property
    def prefill_chunk(self) -> int:
        """The most prompt tokens one sequence computes in one step."""
        return self.long_prefill_chunk or self.max_num_batched_tokens
