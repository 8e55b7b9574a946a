"""The paged backend's tokenizer (per-token bytes, BOS/EOS, chat template) and its torch-free config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tokenizers
from pydantic import ValidationError
from tokenizers import decoders, models, normalizers

from backends.base import ChatMessage
from backends.paged.config import EngineConfig
from backends.paged.tokenizer import Tokenizer


def test_byte_level_token_bytes_rebuild_the_text(tiny_llama):
    tok = Tokenizer.from_dir(tiny_llama.hf_dir, tiny_llama.vocab_size)
    text = "Hello wörld — 你好 🙂 tabs\tand\nnewlines"
    ids = tok.encode(text, add_special_tokens=False)
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()
    assert tok.decode(ids) == text
    assert tiny_llama.eos_token_id in tok.eos_ids  # config.json / tokenizer_config.json
    assert tiny_llama.endoftext_id in tok.eos_ids  # from generation_config.json
    assert tok.token_bytes(tiny_llama.eos_token_id) == b""  # special tokens add no text
    assert tok.token_bytes(10**6) == b""


def test_chat_template_renders_with_generation_prompt(tiny_llama):
    tok = Tokenizer.from_dir(tiny_llama.hf_dir, tiny_llama.vocab_size)
    text = tok.apply_chat_template([ChatMessage("system", "be brief"), ChatMessage("user", "hi")])
    assert text.endswith("<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\nbe brief<|im_end|>\n")


@pytest.fixture()
def sentencepiece_dir(tmp_path: Path) -> Path:
    """A SentencePiece-style (Llama 2) tokenizer: '▁' for spaces, <0xNN> byte fallback, BOS added."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab |= {f"<0x{b:02X}>": 3 + b for b in range(256)}
    vocab |= {"▁": 259, "h": 260, "i": 261, "▁h": 262, "▁hi": 263}
    tok = tokenizers.Tokenizer(
        models.BPE(vocab, [("▁", "h"), ("▁h", "i")], unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(
        [tokenizers.AddedToken("<s>", special=True), tokenizers.AddedToken("</s>", special=True)]
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    config = {
        "bos_token": {"content": "<s>", "special": True},
        "eos_token": "</s>",
        "add_bos_token": True,
        "chat_template": [
            {"name": "tool_use", "template": "unused"},
            {
                "name": "default",
                "template": "{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}",
            },
        ],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    return tmp_path


def test_sentencepiece_byte_fallback_and_bos(sentencepiece_dir: Path):
    tok = Tokenizer.from_dir(sentencepiece_dir, vocab_size=300)
    assert tok.token_bytes(263) == b" hi"
    assert tok.token_bytes(259) == b" "
    assert tok.token_bytes(3 + 0xE2) == b"\xe2"
    assert tok.token_bytes(1) == b""  # <s> is special
    assert set(tok.eos_ids) == {2, 7}
    ids = tok.encode("hi é")
    assert ids[0] == 1 and ids.count(1) == 1
    assert b"".join(tok.token_bytes(i) for i in ids) == " hi é".encode()  # é came as two byte tokens
    assert tok.encode("hi", add_special_tokens=False)[0] != 1
    rendered = tok.apply_chat_template([ChatMessage("user", "hi")])
    assert rendered == "<s>[hi]"
    assert tok.encode(rendered).count(1) == 1  # the template's BOS text is not doubled


def test_config_validates_without_torch():
    code = (
        "import sys; from backends.paged.config import EngineConfig; "
        "EngineConfig.model_validate({'max_num_seqs': 8, 'dtype': 'bfloat16'}); "
        "assert 'torch' not in sys.modules, 'config imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ValidationError):
        EngineConfig.model_validate({"max_num_seq": 8})  # typo: extra keys are refused
    with pytest.raises(ValidationError):
        EngineConfig(dtype="float64")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        EngineConfig(max_num_batched_tokens=16, long_prefill_chunk=32)
    with pytest.raises(ValidationError):
        EngineConfig(device="tpu")
    assert EngineConfig(max_num_batched_tokens=64).prefill_chunk == 64
    assert EngineConfig(long_prefill_chunk=512).prefill_chunk == 512
