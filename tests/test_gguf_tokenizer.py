"""The paged engine's tokenizer built from a GGUF's vocabulary, on real vocabularies.

llama.cpp's own test vocabularies (from the llama-cpp-python sdist, tests/real_assets.py) come with texts and
the ids their original tokenizers gave them. Both the GGUF tokenizer and llama.cpp must give exactly those
ids, and agree with each other on what the expected ids do not cover: special tokens in text, BOS, the
tokens that end generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import llama_cpp
import pytest

from backends.base import ChatMessage
from backends.llamacpp.session import token_piece
from backends.paged.gguf_tokenizer import PRE_TOKENIZERS, UnsupportedVocabularyError, tokenizer_from_gguf
from backends.paged.model_config import UnsupportedModelError
from backends.paged.tokenizer import Tokenizer
from tests import real_assets

# Every vocabulary in the sdist with expected ids whose tokenizer the paged engine supports. llama-bpe is
# Llama 3, llama-spm Llama 2 / Mistral (SentencePiece), phi-3 SentencePiece too; starcoder's split is
# SmolLM2's ("smollm" names the same regexes).
SUPPORTED = (
    "llama-bpe", "llama-spm", "qwen2", "qwen35", "gpt-2", "phi-3", "deepseek-llm", "deepseek-coder",
    "command-r", "falcon", "mpt", "refact", "starcoder",
)  # fmt: skip
# The others, and what refuses them.
REFUSED = {
    "bert-bge": "tokenizer model 'bert'",  # WordPiece
    "nomic-bert-moe": "tokenizer model 't5'",  # Unigram
    "gemma-4": "tokenizer model 'gemma4'",
    "gpt-neox": "names no pre-tokenizer",
    "aquila": "names no pre-tokenizer",
}


@dataclass
class RealVocab:
    name: str
    path: Path
    tokenizer: Tokenizer
    llama: llama_cpp.Llama  # the same file in llama.cpp, vocabulary only


@pytest.fixture(scope="module", params=SUPPORTED)
def vocab(request: pytest.FixtureRequest):
    path = real_assets.vocab_path(request.param)
    llama = real_assets.vocab_only_llama(path)
    yield RealVocab(request.param, path, tokenizer_from_gguf(path, llama.n_vocab()), llama)
    llama.close()


def _mismatches(name: str, tokenize) -> list[str]:
    cases = real_assets.tokenizer_cases(name)
    assert len(cases) >= 46
    return [
        f"{case.text[:50]!r}: expected {list(case.ids)[:12]}, got {got[:12]}"
        for case in cases
        if tuple(got := list(tokenize(case.text))) != case.ids
    ]


def test_gguf_tokenizer_gives_the_original_ids(vocab: RealVocab):
    assert _mismatches(vocab.name, lambda text: vocab.tokenizer.encode(text, add_special_tokens=False)) == []


def test_llama_cpp_gives_the_original_ids(vocab: RealVocab):
    """The dev profile on the same file (llama.cpp in llama-cpp-python 0.3.36 fails none of them)."""

    def tokenize(text: str) -> list[int]:
        return vocab.llama.tokenize(text.encode(), add_bos=False, special=False)

    assert _mismatches(vocab.name, tokenize) == []


def test_special_tokens_bos_and_end_of_generation_as_llama_cpp(vocab: RealVocab):
    llama, tok = vocab.llama, vocab.tokenizer
    handle = llama._model.vocab
    assert tok.bos_id == (llama.token_bos() if llama.token_bos() >= 0 else None)
    assert tok.encode("x") == llama.tokenize(b"x", add_bos=True, special=True)  # BOS where llama.cpp adds one
    eog = {t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(handle, t)}
    assert set(tok.eos_ids) == eog
    # Control tokens written in text (what a chat template renders) become those tokens on both sides.
    control = [
        t for t in range(llama.n_vocab()) if token_piece(handle, t, special=True) and not tok.token_bytes(t)
    ]
    assert control
    text = "Hi" + "".join(f"{token_piece(handle, t, special=True).decode()} x{t} \n" for t in control[:60])
    assert tok.encode(text) == llama.tokenize(text.encode(), add_bos=True, special=True)


def test_token_text_round_trips(vocab: RealVocab):
    text = real_assets.tokenizer_cases(vocab.name)[-1].text  # the long mixed-script case
    ids = vocab.tokenizer.encode(text, add_special_tokens=False)
    decoded = vocab.tokenizer.decode(ids)
    # SentencePiece adds a space in front, as llama.cpp does
    assert decoded in (text, " " + text)


def test_the_demo_model_tokenizes_as_llama_cpp(smollm2_gguf: Path):
    """SmolLM2 ("smollm": starcoder's split) has no expected ids of its own: every vocabulary's texts, and a
    chat prompt with its special tokens, must come out as llama.cpp makes them from the same file."""
    llama = real_assets.vocab_only_llama(smollm2_gguf)
    try:
        tok = tokenizer_from_gguf(smollm2_gguf, llama.n_vocab())
        texts = [case.text for name in SUPPORTED for case in real_assets.tokenizer_cases(name)]
        differ = [
            t
            for t in texts
            if tok.encode(t, add_special_tokens=False) != llama.tokenize(t.encode(), add_bos=False)
        ]
        assert differ == []
        prompt = tok.apply_chat_template(
            [ChatMessage("system", "Be brief."), ChatMessage("user", "Capital?")]
        )
        assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
        assert tok.encode(prompt) == llama.tokenize(prompt.encode(), add_bos=True, special=True)
        handle = llama._model.vocab
        assert set(tok.eos_ids) == {
            t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(handle, t)
        }
    finally:
        llama.close()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_vocabularies_it_cannot_match_are_refused_by_name(name: str):
    with pytest.raises(UnsupportedVocabularyError, match=REFUSED[name]) as refused:
        tokenizer_from_gguf(real_assets.vocab_path(name), 0)
    assert f"ggml-vocab-{name}.gguf" in str(refused.value)
    assert isinstance(refused.value, UnsupportedModelError)  # the engine's load refuses the model with it


def _write_vocab(
    path: Path, pre: str | None, merges: tuple[str, ...] = ("a b",), add_eos: bool = False
) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_add_eos_token(add_eos)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_types([1, 1, 1])
    writer.add_token_merges(list(merges))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_an_unknown_pre_tokenizer_is_refused_naming_it(tmp_path: Path):
    assert "tekken" not in PRE_TOKENIZERS  # llama.cpp approximates its letter classes: not exact
    with pytest.raises(UnsupportedVocabularyError, match=r"pre-tokenizer 'tekken' \(tokenizer.ggml.pre\)"):
        tokenizer_from_gguf(_write_vocab(tmp_path / "tekken.gguf", "tekken"), 0)
    # the same file with a known name loads and merges
    tok = tokenizer_from_gguf(_write_vocab(tmp_path / "gpt2.gguf", "gpt-2"), 3)
    assert tok.encode("ab", add_special_tokens=False) == [2]


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match=r"model\.gguf is not a GGUF file"):
        tokenizer_from_gguf(path, 0)


def test_a_merge_that_is_not_of_tokens_is_refused(tmp_path: Path):
    path = _write_vocab(tmp_path / "bad.gguf", "gpt-2", merges=("a b", "ab c"))
    with pytest.raises(UnsupportedVocabularyError, match="BPE merge 'ab c' is not of two tokens into one"):
        tokenizer_from_gguf(path, 0)


def test_a_vocabulary_that_appends_eos_to_prompts_is_refused(tmp_path: Path):
    path = _write_vocab(tmp_path / "eos.gguf", "gpt-2", add_eos=True)
    with pytest.raises(UnsupportedVocabularyError, match="add_eos_token"):
        tokenizer_from_gguf(path, 0)
