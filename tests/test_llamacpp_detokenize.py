"""The llama.cpp session's per-token bytes, at any length, on real vocabularies.

llama-cpp-python 0.3.36's Llama.detokenize reads each piece into a 32-byte buffer and returns nothing for a
longer one: Llama 3 and Qwen2 have hundreds of such tokens (runs of spaces: an indented code line streamed
token by token lost its indentation). The session reads pieces with a buffer of the size llama.cpp asks for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.llamacpp.session import LlamaSession
from backends.paged.gguf_tokenizer import tokenizer_from_gguf
from backends.paged.tokenizer import Tokenizer
from tests import real_assets

DETOKENIZE_BUFFER = 32  # llama-cpp-python's
# command-r is left out: llama.cpp renders its tokens holding characters outside GPT-2's byte alphabet as
# "[UNK_BYTE_0x...]" where the GGUF tokenizer gives their UTF-8.
VOCABS = ("llama-bpe", "qwen2", "qwen35", "llama-spm", "phi-3", "gpt-2", "deepseek-llm", "starcoder", "mpt")


def _vocab_only_session(path: Path) -> LlamaSession:
    return LlamaSession.open(path, context_length=None, threads=1, vocab_only=True)


@pytest.fixture(scope="module", params=VOCABS)
def real(request: pytest.FixtureRequest):
    path = real_assets.vocab_path(request.param)
    session = _vocab_only_session(path)
    yield request.param, session, tokenizer_from_gguf(path, session.vocab_size)
    session.close()


def test_every_token_is_its_vocabulary_bytes(real: tuple[str, LlamaSession, Tokenizer]):
    _, session, tok = real
    wrong = [t for t in range(session.vocab_size) if session._token_bytes(t) != tok.token_bytes(t)]
    assert wrong == []


@pytest.mark.parametrize("name", ["llama-bpe", "qwen2", "smollm2"])
def test_tokens_longer_than_llama_cpp_pythons_buffer_keep_their_text(
    name: str, request: pytest.FixtureRequest
):
    path = request.getfixturevalue("smollm2_gguf") if name == "smollm2" else real_assets.vocab_path(name)
    session = _vocab_only_session(path)
    tok = tokenizer_from_gguf(path, session.vocab_size)
    try:
        long = [t for t in range(session.vocab_size) if len(tok.token_bytes(t)) > DETOKENIZE_BUFFER]
        assert len(long) >= 40  # 231 in Llama 3's vocabulary, 240 in Qwen2's, 47 in SmolLM2's
        # the bug worked around: llama-cpp-python's own detokenize drops every one of them
        llama = real_assets.vocab_only_llama(path)
        assert {llama.detokenize([t]) for t in long} == {b""}
        assert [session._token_bytes(t) for t in long] == [tok.token_bytes(t) for t in long]
        assert [session._token_text(t) for t in long] == [tok.token_text(t) for t in long]

        code = "def f():\n" + " " * 48 + "return 1\n"  # a deeply indented line
        ids = session.tokenize(code, add_special_tokens=False)
        assert any(t in long for t in ids)
        assert b"".join(session._token_bytes(t) for t in ids) == code.encode()
    finally:
        session.close()


def test_the_tiny_models_tokens_match_its_tokenizer(tiny_model):
    session = LlamaSession.open(tiny_model.gguf_path, context_length=256, threads=1)
    try:
        tok = Tokenizer.from_dir(tiny_model.hf_dir, tiny_model.vocab_size)
        assert [session._token_bytes(t) for t in range(session.vocab_size)] == [
            tok.token_bytes(t) for t in range(session.vocab_size)
        ]
        assert session.eos_text == "<|im_end|>"  # special pieces keep their text
    finally:
        session.close()


def test_end_of_generation_ids_are_llama_cpps(real: tuple[str, LlamaSession, Tokenizer]):
    """The session asks llama.cpp through a binding that keeps the GIL (cold start); the answer is the same
    as through llama-cpp-python's."""
    import llama_cpp

    _, session, _ = real
    vocab = session._vocab
    expected = {t for t in range(session.vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    assert expected and session.eos_ids == expected
