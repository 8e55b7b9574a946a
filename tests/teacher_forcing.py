"""Teacher forcing: the logits of every position of one token sequence, from the paged engine and from
llama.cpp, for comparisons on the same file (GGUF dequantized vs llama.cpp's quantized kernels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from backends.base import SamplingParams
from backends.paged.engine import LLMEngine
from backends.paged.scheduler import ScheduledSeq, SchedulerOutput
from backends.paged.sequence import Sequence


@torch.inference_mode()
def paged_logits(engine: LLMEngine, token_ids: list[int]) -> np.ndarray:
    """[len(token_ids), vocab] float32: one prefill through the engine's runner (its paged attention and
    KV cache), logits of every position rather than only the last. The engine must be idle."""
    runner = engine.runner
    blocks = -(-len(token_ids) // runner.block_size)
    assert blocks <= runner.num_blocks, "not enough KV blocks for the sequence"
    seq = Sequence("teacher-forcing", list(token_ids), SamplingParams(max_tokens=1), arrival=0)
    seq.block_table = list(range(blocks))
    inputs = runner.prepare(SchedulerOutput([ScheduledSeq(seq, len(token_ids), samples=False)]))
    hidden = runner.model(inputs.input_ids, inputs.positions, inputs.meta)
    return runner.model.compute_logits(hidden).cpu().numpy()


def open_llama(path: Path, n_ctx: int = 2048, f32_kv: bool = False, threads: int = 1):
    """llama.cpp with logits for every position (logits_all); an F32 KV cache on request."""
    import llama_cpp

    kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_kv else {}
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=n_ctx, n_batch=512, logits_all=True, verbose=False, seed=0,
        n_threads=threads, n_threads_batch=threads, **kv,
    )  # fmt: skip


def llama_logits(llm, token_ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(token_ids)
    return np.array(llm.scores[: len(token_ids)], dtype=np.float32)
