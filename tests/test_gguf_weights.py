"""GGUF files in the paged engine: the tiny model's GGUF loads to exactly its Hugging Face weights; every
supported tensor type, made by llama.cpp's own quantizer, dequantizes bit for bit as llama.cpp's C code
does and gives llama.cpp's logits; metadata to ModelConfig; what the engine cannot run is refused by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

from backends.paged.config import EngineConfig  # noqa: E402
from backends.paged.engine import LLMEngine  # noqa: E402
from backends.paged.gguf_config import llama3_freq_factors  # noqa: E402
from backends.paged.layers import rope_inv_freq  # noqa: E402
from backends.paged.loader import load_checkpoint  # noqa: E402
from backends.paged.model_config import ModelConfig, RopeConfig, UnsupportedModelError  # noqa: E402
from tests.teacher_forcing import llama_logits, open_llama, paged_logits  # noqa: E402

CPU, F32 = torch.device("cpu"), torch.float32
CONFIG = EngineConfig(num_kv_blocks=64, dtype="float32", device="cpu", max_model_len=1024)

# llama.cpp's llama_ftype for each tensor type under test (pure: every 2-D tensor gets that type).
FTYPES = {"F16": 1, "BF16": 32, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9,
          "Q2_K": 10, "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18}  # fmt: skip
# Relative RMS error of dequantized N(0, s) weights; a wrong layout (permutation, transposition) is ~1.4.
MAX_ERROR = {"F16": 1e-3, "BF16": 5e-3, "Q8_0": 0.01, "Q6_K": 0.03, "Q5_0": 0.06, "Q5_1": 0.06,
             "Q5_K": 0.06, "Q4_0": 0.12, "Q4_1": 0.12, "Q4_K": 0.12, "Q3_K": 0.25, "Q2_K": 0.5}  # fmt: skip


def quantize(src: Path, dst: Path, ftype: int, requantize: bool = False) -> Path:
    """llama.cpp's own quantizer (llama_model_quantize), every tensor to one type."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.pure = True
    params.allow_requantize = requantize
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) == 0
    return dst


def params_of(model) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory):
    """The tiny model's tokenizer with rows of 256 and 512 values, so K-quants (blocks of 256) apply."""
    from backends.tiny_model.gguf_format import write_gguf
    from backends.tiny_model.hf_format import write_hf_dir
    from backends.tiny_model.tokenizer_files import build_tokenizer
    from backends.tiny_model.weights import TinyShapes, make_weights

    out = tmp_path_factory.mktemp("wide")
    tok = build_tokenizer()
    shapes = TinyShapes(vocab_size=tok.vocab_size, hidden_size=256, intermediate_size=512)
    weights = make_weights(shapes, tok, "llama", seed=3)
    (out / "hf").mkdir()
    write_hf_dir(out / "hf", shapes, tok, "llama", weights)
    write_gguf(out / "f32.gguf", shapes, tok, "llama", weights, name="wide")
    return out


def test_tiny_gguf_loads_to_the_hf_weights_exactly(tiny_model):
    """Both archs: llama (q/k rows permuted in the GGUF) and qwen2 (q/k/v biases, not permuted)."""
    from_gguf = load_checkpoint(tiny_model.gguf_path, F32, CPU)
    from_hf = load_checkpoint(tiny_model.hf_dir, F32, CPU)
    hf_cfg = from_hf.config
    assert (
        dataclasses.replace(
            from_gguf.config, eos_token_ids=hf_cfg.eos_token_ids, checkpoint_dtype=hf_cfg.checkpoint_dtype
        )
        == hf_cfg
    )
    assert tiny_model.eos_token_id in from_gguf.config.eos_token_ids
    want, got = params_of(from_hf), params_of(from_gguf)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("kind", ["F16", "BF16"])
def test_half_precision_gguf_is_exact(tiny_llama, tmp_path: Path, kind: str):
    path = quantize(tiny_llama.gguf_path, tmp_path / f"{kind}.gguf", FTYPES[kind])
    rounding = torch.float16 if kind == "F16" else torch.bfloat16
    want = params_of(load_checkpoint(tiny_llama.hf_dir, F32, CPU))
    got = params_of(load_checkpoint(path, F32, CPU))
    for name, value in want.items():
        rounded = value.to(rounding).to(F32) if value.dim() == 2 else value  # norms stay F32
        assert torch.equal(got[name], rounded), name


@pytest.fixture(scope="module")
def wide_weights(wide_model: Path) -> dict[str, torch.Tensor]:
    return params_of(load_checkpoint(wide_model / "hf", F32, CPU))


@pytest.mark.parametrize("kind", list(FTYPES))
def test_quantized_gguf_dequantizes_like_llama_cpp(wide_model: Path, wide_weights, tmp_path: Path, kind: str):
    """The reference is ggml's own C dequantizer: llama.cpp "requantizing" the file to F32 writes it."""
    path = quantize(wide_model / "f32.gguf", tmp_path / f"{kind}.gguf", FTYPES[kind])
    types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2}
    assert types == {kind}  # no fallback to another type: this really tests `kind`
    reference = quantize(path, tmp_path / f"{kind}-as-f32.gguf", 0, requantize=True)  # LLAMA_FTYPE_ALL_F32
    model = load_checkpoint(path, F32, CPU)
    got, want = params_of(model), params_of(load_checkpoint(reference, F32, CPU))
    original = wide_weights
    for name, value in got.items():
        assert torch.equal(value, want[name]), name
        error = (value - original[name]).pow(2).mean().sqrt() / original[name].pow(2).mean().sqrt()
        assert error < MAX_ERROR[kind], (name, float(error))  # quantized as much as `kind` does, no more

    # The engine on the dequantized weights computes what llama.cpp computes on them (F32 throughout).
    ids = [(i * 37 + 11) % 1000 for i in range(96)]
    ours = paged_logits(LLMEngine(model, CONFIG), ids)
    theirs = llama_logits(open_llama(reference, n_ctx=256, f32_kv=True), ids)
    assert np.abs(ours - theirs).max() < 1e-2 and (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_metadata_to_model_config(tiny_model):
    cfg = ModelConfig.from_gguf(tiny_model.gguf_path)
    assert cfg.rms_norm_eps == 1e-5  # stored as float32 9.99999974e-06: read back as written
    assert cfg.rope == RopeConfig(theta=10000.0) and cfg.qkv_bias == (tiny_model.arch == "qwen2")
    assert not cfg.tie_word_embeddings  # the tiny model has an output.weight


def test_llama3_rope_scaling_from_rope_freqs():
    """Llama 3.2's parameters survive the converter's rope_freqs.weight round trip, and the engine's
    frequencies from them equal llama.cpp's (base frequencies divided by the stored factors)."""
    from backends.paged.gguf_config import _llama3_rope

    llama32 = RopeConfig(500000.0, "llama3", 32.0, 1.0, 4.0, 8192)
    factors = llama3_freq_factors(500000.0, 64, llama32)
    assert 1.0 < factors.max() == 32.0 and factors.min() == 1.0
    recovered = _llama3_rope(500000.0, 64, factors.astype(np.float32).astype(np.float64))
    assert recovered == llama32
    base = rope_inv_freq(64, RopeConfig(theta=500000.0)).double().numpy()
    engine = rope_inv_freq(64, recovered).double().numpy()
    np.testing.assert_allclose(engine, base / factors, rtol=1e-5)
    with pytest.raises(UnsupportedModelError, match="rope_freqs"):
        _llama3_rope(500000.0, 64, np.linspace(1.0, 3.0, 32))


def _minimal_gguf(path: Path, arch: str, rope_scaling: tuple[str, float] | None = None, **extra: int) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    if rope_scaling is not None:
        writer.add_string(f"{arch}.rope.scaling.type", rope_scaling[0])
        writer.add_float32(f"{arch}.rope.scaling.factor", rope_scaling[1])
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_context_length(64)
    writer.add_layer_norm_rms_eps(1e-5)
    for key, value in extra.items():  # split_count is a general key; the others are the arch's
        writer.add_uint32("split.count" if key == "split_count" else f"{arch}.{key}", value)
    writer.add_tensor("token_embd.weight", np.zeros((10, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_architecture_is_refused_by_name(tmp_path: Path):
    from backends.inspect import check_paged_servable

    with pytest.raises(UnsupportedModelError, match="'phi3'"):
        load_checkpoint(_minimal_gguf(tmp_path / "phi3.gguf", "phi3"), F32, CPU)
    with pytest.raises(UnsupportedModelError, match="GGUF architecture 'phi3' is not supported"):
        check_paged_servable(tmp_path / "phi3.gguf")
    with pytest.raises(UnsupportedModelError, match="one of 3 splits: merge them first"):
        ModelConfig.from_gguf(_minimal_gguf(tmp_path / "split.gguf", "llama", split_count=3))
    with pytest.raises(UnsupportedModelError, match="mixture-of-experts"):
        ModelConfig.from_gguf(_minimal_gguf(tmp_path / "moe.gguf", "llama", expert_count=8))
    assert ModelConfig.from_gguf(_minimal_gguf(tmp_path / "ok.gguf", "llama")).tie_word_embeddings
    linear = ModelConfig.from_gguf(_minimal_gguf(tmp_path / "linear.gguf", "llama", ("linear", 4.0)))
    assert linear.rope == RopeConfig(theta=10000.0, type="linear", factor=4.0)
    with pytest.raises(UnsupportedModelError, match="rope scaling 'yarn' is not supported"):
        ModelConfig.from_gguf(_minimal_gguf(tmp_path / "yarn.gguf", "qwen2", ("yarn", 4.0)))


def test_unsupported_tensor_type_is_refused_by_name(wide_model: Path, tmp_path: Path):
    from backends.inspect import check_paged_servable

    path = quantize(wide_model / "f32.gguf", tmp_path / "iq4nl.gguf", 25)  # LLAMA_FTYPE_MOSTLY_IQ4_NL
    with pytest.raises(UnsupportedModelError, match="IQ4_NL"):
        load_checkpoint(path, F32, CPU)
    with pytest.raises(
        UnsupportedModelError, match=r"GGUF tensor type IQ4_NL \(16 tensors, e\.g\. output\.weight\)"
    ):
        check_paged_servable(path)  # the start-up check, from the header alone
    check_paged_servable(wide_model / "f32.gguf")


def test_quantized_safetensors_checkpoint_is_refused_at_start(tiny_llama, tmp_path: Path):
    """An AWQ checkpoint used to start and fail every request with a 503 about a missing `qweight`."""
    import json
    import shutil

    from backends.inspect import inspect_model
    from gateway.config import ConfigError, ModelSpec
    from gateway.startup import ensure_model_files

    shutil.copytree(tiny_llama.hf_dir, tmp_path / "awq")
    config = json.loads((tmp_path / "awq" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    (tmp_path / "awq" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="'awq'"):
        inspect_model(tmp_path / "awq")
    spec = ModelSpec(name="awq", backend="paged", path=str(tmp_path / "awq"))
    with pytest.raises(ConfigError, match="quant_method 'awq'") as caught:
        ensure_model_files(spec, "profiles.prod.models[0]", "tandem.yaml")
    assert "profiles.prod.models[0].path" in str(caught.value)


def test_a_truncated_gguf_is_refused_at_start(tiny_llama, tmp_path: Path):
    from gateway.config import ConfigError, ModelSpec
    from gateway.startup import ensure_model_files

    data = tiny_llama.gguf_path.read_bytes()
    for size in (len(data) // 2, 2000):  # inside the tensor data; inside the header
        (tmp_path / "cut.gguf").write_bytes(data[:size])
        spec = ModelSpec(name="cut", backend="paged", path=str(tmp_path / "cut.gguf"))
        with pytest.raises(ConfigError, match="truncated or malformed GGUF file"):
            ensure_model_files(spec, "profiles.prod.models[0]", "tandem.yaml")
