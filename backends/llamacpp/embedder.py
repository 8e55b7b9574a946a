"""Embeddings on llama.cpp: a second context in embedding mode over the same (memory-mapped) GGUF.

It is created on the first embedding request, so models that never embed pay nothing for it.
Decoder models have no pooling of their own; tandem mean-pools them, and every vector is L2-normalized
(as OpenAI's and Ollama's embeddings are).
"""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np

from backends.llamacpp.native_log import route_native_logs


class LlamaEmbedder:
    def __init__(self, path: Path, context_length: int, threads: int) -> None:
        metadata_pooling = _declared_pooling(path)
        route_native_logs()
        self._llm = llama_cpp.Llama(
            model_path=str(path),
            embedding=True,
            n_ctx=context_length,
            n_batch=context_length,
            n_ubatch=context_length,
            n_threads=threads,
            n_threads_batch=threads,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN if metadata_pooling is None else metadata_pooling,
            verbose=True,  # verbose=False swaps fds 1 and 2 under other threads' feet: see native_log
            # tandem renders chat templates itself; naming a format skips llama-cpp-python's guess, which
            # would print the whole template to stderr on every load (verbose)
            chat_format="chatml",
        )
        self.context_length = context_length
        self.dimensions = self._llm.n_embd()

    def embed(self, token_ids: list[int]) -> np.ndarray:
        """One input's normalized embedding; the caller has checked its length against the context."""
        llm = self._llm
        llm._batch.reset()
        llm._batch.add_sequence(token_ids, 0, True)
        llm._ctx.kv_cache_clear()
        llm._ctx.decode(llm._batch)
        pointer = llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, 0)
        vector = np.array(pointer[: self.dimensions], dtype=np.float32)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def close(self) -> None:
        self._llm.close()


def _declared_pooling(path: Path) -> int | None:
    import gguf

    reader = gguf.GGUFReader(path)
    architecture = reader.fields.get("general.architecture")
    if architecture is None:
        return None
    field = reader.fields.get(f"{architecture.contents()}.pooling_type")
    return int(field.contents()) if field is not None else None
