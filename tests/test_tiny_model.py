"""The generated tiny model: deterministic files, and llama.cpp (GGUF) == transformers (HF) behaviour."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backends.tiny_model import TinyModel, make_tiny_model

REPO = Path(__file__).resolve().parents[1]

TEXTS = [
    "Hello, world! How are you today?",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "multiple    spaces   between  words",
    "\ttabs\tand\t\ttabs\t",
    "line one\nline two\n\n\nline five\n",
    "\n\n\n",
    "  \n \n\t\n",
    "digits 0123456789 3.14159 1e-5 -42 +7 65536",
    "punctuation!? ... --- ;:,. \"quotes\" 'single' (parens) [brackets] {braces} <tags> @#$%^&*_=+|\\/~`",
    "don't won't I'll we've they're she's I'm he'd",
    "Café naïve façade résumé jalapeño Zürich São Paulo Kraków Ærøskøbing",
    "日本語のテキストです。中文：你好，世界！한국어 안녕하세요",
    "Привет, мир! Καλημέρα κόσμε.",
    "emoji 👋🙂😂 ❤️ 👍🏽 🏳️‍🌈 👨‍👩‍👧‍👦 👩🏽‍💻 ✅",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|im_end|>",
    "def f(x):\n    return x * 2  # comment\n",
    "",
]
DECOMPOSED = "e\u0301te\u0301 (decomposed accents)"  # not NFC: qwen2's HF tokenizer normalizes it first

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello! Who are you?"},
    {"role": "assistant", "content": "I am a tiny model."},
    {"role": "user", "content": "Tell me a joke 🙂\nwith two lines."},
]
GREEDY_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
]
GREEDY_TOKENS = 32


# --------------------------------------------------------------------------- files


def _model_bytes(tm: TinyModel) -> tuple[bytes, bytes, bytes]:
    return (
        tm.gguf_path.read_bytes(),
        (tm.hf_dir / "model.safetensors").read_bytes(),
        (tm.hf_dir / "tokenizer.json").read_bytes(),
    )


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, tiny_llama: TinyModel) -> None:
    a = make_tiny_model(tmp_path / "a", arch="llama", seed=0)
    b = make_tiny_model(tmp_path / "b", arch="llama", seed=1)
    assert _model_bytes(a) == _model_bytes(tiny_llama)  # same seed, another directory
    assert a.gguf_path.read_bytes() != b.gguf_path.read_bytes()
    assert (a.hf_dir / "model.safetensors").read_bytes() != (b.hf_dir / "model.safetensors").read_bytes()
    assert (a.hf_dir / "tokenizer.json").read_bytes() == (b.hf_dir / "tokenizer.json").read_bytes()


def test_reuse_and_repair(tmp_path: Path) -> None:
    tm = make_tiny_model(tmp_path, arch="qwen2", seed=3)
    mtime = tm.gguf_path.stat().st_mtime_ns
    again = make_tiny_model(tmp_path, arch="qwen2", seed=3)
    assert again == tm and tm.gguf_path.stat().st_mtime_ns == mtime  # stamp matched: nothing rewritten
    good = _model_bytes(tm)

    (tm.hf_dir / "model.safetensors").write_bytes(b"truncated")  # a damaged file is regenerated
    assert _model_bytes(make_tiny_model(tmp_path, arch="qwen2", seed=3)) == good
    other = make_tiny_model(tmp_path, arch="llama", seed=3)  # another arch in the same dir: rewritten
    assert json.loads((other.hf_dir / "config.json").read_text())["model_type"] == "llama"
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError):
        make_tiny_model(tmp_path / "x", arch="mistral")


def test_generator_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from backends.tiny_model import make_tiny_model; "
        f"make_tiny_model({str(tmp_path)!r}, arch='qwen2'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_gguf_metadata(tiny_model: TinyModel) -> None:
    import gguf

    reader = gguf.GGUFReader(tiny_model.gguf_path)

    def field(name: str) -> Any:
        return reader.fields[name].contents()

    cfg = json.loads((tiny_model.hf_dir / "config.json").read_text())
    tok_cfg = json.loads((tiny_model.hf_dir / "tokenizer_config.json").read_text())
    arch = tiny_model.arch
    assert field("general.architecture") == arch
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == {"llama": "gpt-2", "qwen2": "qwen2"}[arch]
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == cfg["vocab_size"] == tiny_model.vocab_size
    types = field("tokenizer.ggml.token_type")
    special = {i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL}
    assert {tokens[i] for i in special} == {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    assert field("tokenizer.ggml.eos_token_id") == cfg["eos_token_id"] == tiny_model.eos_token_id
    assert tokens[tiny_model.eos_token_id] == "<|im_end|>" == tok_cfg["eos_token"]
    assert field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.chat_template") == tok_cfg["chat_template"]
    assert field(f"{arch}.attention.head_count_kv") == cfg["num_key_value_heads"] == 2
    assert (arch == "qwen2") == ("blk.0.attn_q.bias" in {t.name for t in reader.tensors})
    gen_cfg = json.loads((tiny_model.hf_dir / "generation_config.json").read_text())
    assert gen_cfg["eos_token_id"] == [tiny_model.eos_token_id, tiny_model.endoftext_id]


# --------------------------------------------------------------------------- both runtimes


@dataclass
class Runtimes:
    tm: TinyModel
    llm: Any  # llama_cpp.Llama, default settings (F16 KV cache)
    llm_f32: Any  # llama_cpp.Llama with an F32 KV cache: computes the same function as transformers
    tok: Any  # transformers tokenizer
    model: Any  # transformers model


@pytest.fixture(scope="module")
def runtimes(tiny_model: TinyModel) -> Runtimes:
    torch = pytest.importorskip("torch")
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    path = str(tiny_model.gguf_path)
    llm = llama_cpp.Llama(path, n_ctx=512, n_threads=2, verbose=False)
    f32 = llama_cpp.GGML_TYPE_F32
    llm_f32 = llama_cpp.Llama(
        path, n_ctx=512, n_threads=2, verbose=False, logits_all=True, type_k=f32, type_v=f32
    )
    config = AutoConfig.from_pretrained(tiny_model.hf_dir)
    assert config.model_type == tiny_model.arch and config.num_key_value_heads == 2
    tok = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.hf_dir, dtype=torch.float32).eval()
    return Runtimes(tiny_model, llm, llm_f32, tok, model)


def _cpp_encode(rt: Runtimes, text: str) -> list[int]:
    return rt.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_tokenization_parity_and_round_trip(runtimes: Runtimes, text: str) -> None:
    ids = runtimes.tok.encode(text, add_special_tokens=False)
    assert _cpp_encode(runtimes, text) == ids
    assert runtimes.tok.decode(ids) == text
    assert runtimes.llm.detokenize(ids, special=True).decode("utf-8") == text


def test_tokenization_of_non_nfc_text(runtimes: Runtimes) -> None:
    ids = runtimes.tok.encode(DECOMPOSED, add_special_tokens=False)
    if runtimes.tm.arch == "qwen2":  # transformers' Qwen2Tokenizer NFC-normalizes, llama.cpp does not
        assert _cpp_encode(runtimes, unicodedata.normalize("NFC", DECOMPOSED)) == ids
    else:
        assert _cpp_encode(runtimes, DECOMPOSED) == ids
        assert runtimes.tok.decode(ids) == DECOMPOSED


def test_vocab_and_specials_agree(runtimes: Runtimes) -> None:
    tok, llm = runtimes.tok, runtimes.llm
    assert llm.n_vocab() == len(tok) == runtimes.tm.vocab_size
    assert llm.token_eos() == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    for name in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert _cpp_encode(runtimes, name) == [tok.convert_tokens_to_ids(name)]
    assert tok.encode("hi", add_special_tokens=True) == tok.encode("hi", add_special_tokens=False)  # no BOS


def test_chat_template_renders_identically(runtimes: Runtimes) -> None:
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    hf = runtimes.tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CONVERSATION)
    assert hf == expected + "<|im_start|>assistant\n"

    template = runtimes.llm.metadata["tokenizer.chat_template"]
    jinja = Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="<|endoftext|>")
    assert jinja(messages=CONVERSATION).prompt == hf

    # llama.cpp's own (C++) template engine, fed the template stored in the GGUF
    msgs = (llama_cpp.llama_chat_message * len(CONVERSATION))(
        *[llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode()) for m in CONVERSATION]
    )
    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_chat_apply_template(template.encode(), msgs, len(CONVERSATION), True, buf, len(buf))
    assert 0 < n <= len(buf)
    assert buf.raw[:n].decode("utf-8") == hf


def _hf_greedy(rt: Runtimes, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = rt.model.generate(
            torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=rt.tm.endoftext_id
        )
    return out[0, len(ids) :].tolist()


def _cpp_greedy(llm: Any, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("prompt", GREEDY_PROMPTS, ids=["prose", "code", "chat"])
def test_greedy_parity(runtimes: Runtimes, prompt: str) -> None:
    import torch

    ids = runtimes.tok.encode(prompt, add_special_tokens=False)
    hf = _hf_greedy(runtimes, ids, GREEDY_TOKENS)
    assert len(hf) == GREEDY_TOKENS, "EOS in the first greedy tokens"
    assert not set(hf) & {runtimes.tm.eos_token_id, runtimes.tm.endoftext_id}
    assert len(set(hf)) >= GREEDY_TOKENS // 2, "greedy text should be varied"
    assert _cpp_greedy(runtimes.llm_f32, ids, GREEDY_TOKENS) == hf
    # llama.cpp's default F16 KV cache adds ~4e-3 of logit noise; these prompts' smallest top-1 margins
    # are ~0.03-0.06, so they agree too (see the backends.tiny_model docstring before adding prompts)
    assert _cpp_greedy(runtimes.llm, ids, GREEDY_TOKENS) == hf

    # the same function, position by position (teacher-forced on the generated sequence)
    full = ids + hf
    runtimes.llm_f32.reset()
    runtimes.llm_f32.eval(full)
    cpp_logits = np.asarray(runtimes.llm_f32.scores[: len(full)])
    with torch.no_grad():
        hf_logits = runtimes.model(torch.tensor([full])).logits[0].numpy()
    np.testing.assert_allclose(cpp_logits, hf_logits, atol=2e-3, rtol=0)
