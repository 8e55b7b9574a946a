"""One llama.cpp context holding several sequences, and the llama_batch that feeds it (engine thread only).

llama-cpp-python's high-level Llama runs one sequence per context (its n_seq_max is 1 for generation), so
the batching engine opens its own context on the Llama's model through the low-level API: n_seq_max
sequences over `cells` KV cells, as llama-server's slots.

Split (the default, as llama-server -np N): each sequence has a stream of cells/n_seq_max cells of its own,
and a token attends over its own sequence's cells only. Unified (`kv_unified`): one pool any sequence may
grow into, and a copied prefix shares its cells; but every token's attention then spans the cells of all
sequences (measured on SmolLM2, 8 sequences of ~160 tokens, 2 threads: 127 tok/s unified, 163 split).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp
import numpy as np

# llama.cpp splits a batch into micro-batches of at most this many tokens. Below 64 (ggml's flash-attention
# Q tile, GGML_FA_TILE_Q), the CPU attention kernel is the same whatever the micro-batch holds: from 64 query
# rows on, ggml switches to a tiled kernel that rounds differently (logits moved by up to ~4 on SmolLM2), so
# a prompt prefilled beside others would not give the tokens it gives alone.
MICRO_BATCH = 63


class DecodeError(RuntimeError):
    """llama_decode refused or failed a batch; the KV of the sequences in it is undefined."""


@dataclass(frozen=True, slots=True)
class ContextShape:
    cells: int  # KV cells over all sequences
    sequences: int  # n_seq_max
    batch_tokens: int  # the most tokens one decode call takes (n_batch = n_ubatch)
    threads: int
    unified: bool = False  # one pool for all sequences, or a stream of cells per sequence


class BatchContext:
    def __init__(self, model: llama_cpp.llama_model_p, n_vocab: int, shape: ContextShape) -> None:
        if not 1 <= shape.sequences <= llama_cpp.llama_max_parallel_sequences():
            raise ValueError(
                f"parallel must lie in [1, {llama_cpp.llama_max_parallel_sequences()}], not {shape.sequences}"
            )
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = shape.cells
        params.n_batch = shape.batch_tokens
        params.n_ubatch = min(shape.batch_tokens, MICRO_BATCH)
        params.n_seq_max = shape.sequences
        params.n_threads = params.n_threads_batch = shape.threads
        params.kv_unified = shape.unified
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {shape.cells} KV cells")
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._n_vocab = n_vocab
        self.cells = int(llama_cpp.llama_n_ctx(ctx))  # llama.cpp pads the size it was asked for
        self.cells_per_sequence = int(llama_cpp.llama_n_ctx_seq(ctx))  # = cells when unified
        self.shape = shape
        self._batch = llama_cpp.llama_batch_init(shape.batch_tokens, 0, 1)
        self._size = 0

    @property
    def handle(self) -> llama_cpp.llama_context_p:
        """The llama_context itself, for what acts on a whole context (LoRA adapters)."""
        return self._ctx

    # --- the batch ---------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self._size

    def clear(self) -> None:
        self._size = 0

    def add(self, token: int, pos: int, seq_id: int, *, logits: bool) -> int:
        """Append one token of sequence `seq_id` at position `pos`; returns its index (for logits)."""
        i = self._size
        if i >= self.shape.batch_tokens:
            raise OverflowError(f"the batch holds at most {self.shape.batch_tokens} tokens")
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits
        self._size = i + 1
        return i

    def decode(self) -> None:
        self._batch.n_tokens = self._size
        status = llama_cpp.llama_decode(self._ctx, self._batch)
        if status != 0:
            what = {1: "no KV room for the batch", 2: "aborted", -1: "invalid batch"}.get(status, "failed")
            raise DecodeError(f"llama_decode returned {status} ({what}) on {self._size} tokens")

    def logits(self, index: int) -> np.ndarray:
        """The logits of the batch's token `index` (which asked for them); valid until the next decode."""
        pointer = llama_cpp.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self._n_vocab,)
        )

    # --- the KV cache ------------------------------------------------------------------------------------
    def remove(self, seq_id: int, start: int = 0) -> None:
        """Drop sequence `seq_id`'s cells at positions >= start."""
        if not llama_cpp.llama_memory_seq_rm(self._memory, seq_id, start, -1):
            raise RuntimeError(f"llama.cpp could not truncate sequence {seq_id} at {start}")

    def copy(self, source: int, target: int, length: int) -> None:
        """Give `target` the KV of `source`'s first `length` positions: shared cells in a unified pool;
        split, a copy of source's whole stream (llama.cpp copies streams only whole, at the next decode)
        cut back to `length`."""
        if self.shape.unified:
            llama_cpp.llama_memory_seq_cp(self._memory, source, target, 0, length)
            return
        llama_cpp.llama_memory_seq_cp(self._memory, source, target, -1, -1)
        self.remove(target, length)

    def close(self) -> None:
        if self._ctx is not None:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
