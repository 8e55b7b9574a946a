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
        self.decodes = 0

    def embed(self, token_ids: list[int]) -> np.ndarray:
        """One input's normalized embedding; the caller has checked its length against the context."""
        return self.embed_many([token_ids])[0]

    def embed_many(self, inputs: list[list[int]]) -> list[np.ndarray]:
        """Normalized embeddings of several inputs, one sequence each, in as few decodes as the batch
        (context_length tokens, n_seq_max sequences) allows: one when they fit."""
        limit_tokens, limit_sequences = self._llm.n_batch, self._llm.context_params.n_seq_max
        vectors: list[np.ndarray] = []
        group: list[list[int]] = []
        for token_ids in inputs:
            size = sum(len(ids) for ids in group)
            if group and (size + len(token_ids) > limit_tokens or len(group) >= limit_sequences):
                vectors += self._decode(group)
                group = []
            group.append(token_ids)
        if group:
            vectors += self._decode(group)
        return vectors

    def _decode(self, group: list[list[int]]) -> list[np.ndarray]:
        llm = self._llm
        llm._batch.reset()
        for sequence, token_ids in enumerate(group):
            llm._batch.add_sequence(token_ids, sequence, True)
        llm._ctx.kv_cache_clear()
        llm._ctx.decode(llm._batch)
        self.decodes += 1
        vectors = []
        for sequence in range(len(group)):
            pointer = llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, sequence)
            vector = np.array(pointer[: self.dimensions], dtype=np.float32)
            norm = float(np.linalg.norm(vector))
            vectors.append(vector / norm if norm > 0 else vector)
        return vectors

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
