"""Owns the device: dtype, the KV-cache pool, the model; turns a SchedulerOutput into sampled tokens."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

import kernels
from backends.base import SamplingParams
from backends.paged.attention import AttentionMetadata
from backends.paged.config import EngineConfig
from backends.paged.lora_slots import LoraSlots
from backends.paged.model import CausalLM
from backends.paged.sampler import Sampler, SamplerOutput, SamplingBatch
from backends.paged.scheduler import ScheduledSeq, SchedulerOutput
from backends.paged.sequence import Sequence

log = logging.getLogger(__name__)

# The warm-up step samples with truncation so the sort buffers count in its peak memory.
_WARMUP_PARAMS = SamplingParams(max_tokens=1, temperature=1.0, top_k=50, top_p=0.9)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass(slots=True)
class ModelInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [S]: the last token of each sampling sequence
    sampling_seqs: list[Sequence]  # row order of the sampler's output
    sampling: SamplingBatch | None  # None when no sequence samples this step
    lora_slots: torch.Tensor | None = None  # [T] int32 LoRA slot per token (-1: base); None: no adapters
    lora_groups: kernels.SlotGroups | None = None  # CPU only: the rows of each slot (the reference's view)


class ModelRunner:
    def __init__(self, model: CausalLM, config: EngineConfig, eos_ids: tuple[int, ...]) -> None:
        param = next(model.parameters())
        self.model = model
        self.config = config
        self.device, self.dtype = param.device, param.dtype
        self.eos_ids = eos_ids
        self.block_size = config.block_size
        self.vocab_size = model.config.vocab_size
        self.sampler = Sampler()
        # Before the KV pool is sized, so the pool is what remains after the slots (and, on CUDA, the
        # warm-up runs the LoRA path and counts its buffers in the peak).
        self.lora = LoraSlots(model, config.max_loras, config.max_lora_rank) if config.max_loras else None
        self.num_blocks = self._num_kv_blocks()
        cfg = model.config
        shape = (2, cfg.num_layers, self.num_blocks, self.block_size, cfg.num_kv_heads, cfg.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._bind_cache(self.kv_cache)

    # --- KV pool -----------------------------------------------------------------------------------------
    @property
    def block_bytes(self) -> int:
        cfg = self.model.config
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * cfg.num_layers * self.block_size * cfg.num_kv_heads * cfg.head_dim * elem

    def _num_kv_blocks(self) -> int:
        cfg = self.model.config
        max_len = self.config.max_model_len or cfg.max_model_len
        useful = self.config.max_num_seqs * -(-max_len // self.block_size)  # more can never be used
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        if self.device.type == "cuda":
            budget = self._cuda_kv_budget()
        else:
            budget = int(self.config.cpu_kv_cache_gib * 2**30)
        num = min(budget // self.block_bytes, useful)
        if num < 1:
            raise RuntimeError(
                "no memory left for the KV cache: lower max_num_batched_tokens or the model size"
            )
        log.info(
            "KV cache: %d blocks of %d tokens (%.2f GiB)",
            num,
            self.block_size,
            num * self.block_bytes / 2**30,
        )
        return num

    def _cuda_kv_budget(self) -> int:
        """Bytes for the pool: the utilisation share of the GPU minus what a full-budget step peaks at."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self._warm_up()
        free, total = torch.cuda.mem_get_info(self.device)
        stats = torch.cuda.memory_stats(self.device)
        used_by_others = total - free - stats["allocated_bytes.all.current"]
        peak = stats["allocated_bytes.all.peak"]
        return int(total * self.config.gpu_memory_utilization) - used_by_others - peak

    def _warm_up(self) -> None:
        """One step at the full token budget, on a throwaway cache just big enough for it."""
        max_len = self.config.max_model_len or self.model.config.max_model_len
        tokens = self.config.max_num_batched_tokens
        lens = [max_len] * (tokens // max_len) + ([tokens % max_len] if tokens % max_len else [])
        lens = lens[: self.config.max_num_seqs]
        blocks_per_seq = [-(-n // self.block_size) for n in lens]
        cfg = self.model.config
        shape = (2, cfg.num_layers, sum(blocks_per_seq), self.block_size, cfg.num_kv_heads, cfg.head_dim)
        self._bind_cache(torch.zeros(shape, dtype=self.dtype, device=self.device))
        seqs, first = [], 0
        for i, (n, nb) in enumerate(zip(lens, blocks_per_seq, strict=True)):
            seq = Sequence(f"warmup-{i}", [0] * n, _WARMUP_PARAMS, arrival=i)
            seq.block_table = list(range(first, first + nb))
            first += nb
            seqs.append(ScheduledSeq(seq, n, samples=True))
        inputs = self.prepare(SchedulerOutput(seqs))
        if self.lora is not None:  # every token on an adapter: the LoRA path's buffers count in the peak
            inputs.lora_slots = torch.zeros(sum(lens), dtype=torch.int32, device=self.device)
        self.execute(inputs)
        torch.cuda.synchronize(self.device)
        self._bind_cache(torch.empty(0))

    def _bind_cache(self, cache: torch.Tensor) -> None:
        for i, attn in enumerate(self.model.attention_layers()):
            attn.k_cache, attn.v_cache = (cache[0, i], cache[1, i]) if cache.numel() else (cache, cache)

    def make_generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    # --- one step ----------------------------------------------------------------------------------------
    def prepare(self, out: SchedulerOutput) -> ModelInputs:
        """Flat batch: one-token chunks first (decode kernel), then prefill chunks; numpy on the host."""
        items = [s for s in out.scheduled if s.num_new_tokens == 1]
        num_decodes = len(items)
        items += [s for s in out.scheduled if s.num_new_tokens > 1]
        bs = self.block_size
        num_new = np.fromiter((s.num_new_tokens for s in items), dtype=np.int64, count=len(items))
        starts = np.fromiter((s.seq.num_computed_tokens for s in items), dtype=np.int64, count=len(items))
        cu = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(num_new, out=cu[1:])
        total = int(cu[-1])
        width = max(len(s.seq.block_table) for s in items)
        tables = np.zeros((len(items), width), dtype=np.int32)
        input_ids: list[int] = []
        for row, item in enumerate(items):
            seq, start = item.seq, int(starts[row])
            tables[row, : len(seq.block_table)] = seq.block_table
            input_ids += seq.token_ids[start : start + item.num_new_tokens]
        row_of_token = np.repeat(np.arange(len(items)), num_new)
        positions = np.arange(total, dtype=np.int64) - np.repeat(cu[:-1] - starts, num_new)
        slots = tables[row_of_token, positions // bs].astype(np.int64) * bs + positions % bs
        context_lens = (starts + num_new).astype(np.int32)
        prefill_cu = (cu[num_decodes:] - cu[num_decodes]).astype(np.int32)
        sampling_rows = [row for row, item in enumerate(items) if item.samples]

        to_dev = self._to_device
        meta = AttentionMetadata(
            slot_mapping=to_dev(slots),
            num_decode_tokens=num_decodes,
            decode_block_tables=to_dev(tables[:num_decodes]),
            decode_context_lens=to_dev(context_lens[:num_decodes]),
            prefill_block_tables=to_dev(tables[num_decodes:]),
            prefill_cu_query_lens=to_dev(prefill_cu),
            prefill_context_lens=to_dev(context_lens[num_decodes:]),
        )
        lora_slots, lora_groups = None, None
        if self.lora is not None and any(item.seq.adapter is not None for item in items):
            per_seq = np.asarray(self.lora.activate([item.seq.adapter for item in items]), dtype=np.int32)
            lora_slots = to_dev(np.repeat(per_seq, num_new))
            if self.device.type == "cpu":
                lora_groups = kernels.slot_groups(lora_slots)
        sampling_seqs = [items[row].seq for row in sampling_rows]
        sampling = None
        if sampling_seqs:
            sampling = SamplingBatch.build(
                sampling_seqs, self.vocab_size, self.eos_ids, self._tensor_to_device
            )
        return ModelInputs(
            input_ids=to_dev(np.asarray(input_ids, dtype=np.int64)),
            positions=to_dev(positions),
            meta=meta,
            logits_indices=to_dev(cu[1:][sampling_rows] - 1),
            sampling_seqs=sampling_seqs,
            sampling=sampling,
            lora_slots=lora_slots,
            lora_groups=lora_groups,
        )

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return self._tensor_to_device(torch.from_numpy(np.ascontiguousarray(array)))

    def _tensor_to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Host to device without a stream sync: from pinned memory, asynchronously."""
        if self.device.type == "cpu":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    @torch.inference_mode()
    def execute(self, inputs: ModelInputs) -> SamplerOutput | None:
        """Run the model; sample for the sequences whose chunk reached their last token."""
        if self.lora is not None:
            self.lora.batch.token_slots, self.lora.batch.groups = inputs.lora_slots, inputs.lora_groups
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta)
        if inputs.sampling is None:
            return None
        logits = self.model.compute_logits(hidden[inputs.logits_indices])
        return self.sampler(logits, inputs.sampling)
