"""Checkpoint loading (shards, tied embeddings, rope scaling, refusals), bf16 on CPU, and the benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from backends.base import GenerationRequest, SamplingParams  # noqa: E402
from backends.paged.config import EngineConfig  # noqa: E402
from backends.paged.engine import LLMEngine  # noqa: E402
from backends.paged.loader import checkpoint_files, load_checkpoint  # noqa: E402
from backends.paged.model_config import ModelConfig, UnsupportedModelError  # noqa: E402

CONFIG = EngineConfig(num_kv_blocks=64, dtype="float32", device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scaled_tied_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama 3.1-style: llama3 rope scaling, tied embeddings, saved in several safetensors shards."""
    out = tmp_path_factory.mktemp("llama31")
    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.3)  # sharp logits: greedy far from ties
    model.save_pretrained(out, max_shard_size="100KB")
    return out


def test_sharded_tied_llama3_matches_hf(scaled_tied_checkpoint: Path):
    path = scaled_tied_checkpoint
    assert (path / "model.safetensors.index.json").exists() and len(checkpoint_files(path)) > 1
    cfg = ModelConfig.from_dir(path)
    assert cfg.tie_word_embeddings and cfg.rope.type == "llama3"
    engine = LLMEngine(load_checkpoint(path, torch.float32, torch.device("cpu")), CONFIG)
    prompt = list(range(3, 60, 2))
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=1)
    engine.add_request(GenerationRequest("a", prompt, params))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    tokens = [t for o in outputs for t in o.new_token_ids]
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
    assert tokens == logits.argmax(-1).tolist()
    reference = torch.log_softmax(logits, dim=-1)
    for step, out in enumerate(outputs):
        assert out.logprobs is not None
        assert out.logprobs[0].logprob == pytest.approx(reference[step, tokens[step]].item(), abs=1e-4)


def test_missing_tensor_is_refused(scaled_tied_checkpoint: Path, tmp_path: Path):
    from safetensors.torch import load_file, save_file

    tensors = {}
    for file in checkpoint_files(scaled_tied_checkpoint):
        tensors |= load_file(file)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((scaled_tied_checkpoint / "config.json").read_text())
    with pytest.raises(ValueError, match="up_proj"):
        load_checkpoint(tmp_path, torch.float32, torch.device("cpu"))


def test_unsupported_configs_are_refused():
    base = {
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    assert ModelConfig.from_hf(base).head_dim == 4
    with pytest.raises(UnsupportedModelError, match="yarn"):
        ModelConfig.from_hf(base | {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(UnsupportedModelError, match="gemma"):
        ModelConfig.from_hf(base | {"model_type": "gemma"})
    with pytest.raises(UnsupportedModelError, match="hidden_act"):
        ModelConfig.from_hf(base | {"hidden_act": "gelu"})
    mistral = ModelConfig.from_hf(base | {"model_type": "mistral", "sliding_window": 128})
    assert mistral.max_model_len == 128  # full attention is exact inside the window
    qwen = ModelConfig.from_hf(base | {"model_type": "qwen2", "sliding_window": 128})
    assert qwen.qkv_bias and qwen.sliding_window is None  # use_sliding_window is off by default


def test_max_model_len_beyond_the_model_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="max_model_len"):
        LLMEngine.from_pretrained(tiny_llama.hf_dir, CONFIG.model_copy(update={"max_model_len": 10**6}))


def test_bfloat16_on_cpu(tiny_llama):
    fp32 = LLMEngine.from_pretrained(tiny_llama.hf_dir, CONFIG)
    bf16 = LLMEngine.from_pretrained(tiny_llama.hf_dir, CONFIG.model_copy(update={"dtype": "bfloat16"}))
    assert bf16.runner.kv_cache.dtype == torch.bfloat16
    prompt = list(range(100, 140))
    request = [GenerationRequest("a", prompt, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))]
    want, got = fp32.generate(request)["a"], bf16.generate(request)["a"]
    assert len(got) == 8 and got[:2] == want[:2]  # bf16 rounding may drift later, not at once


def test_random_weights_engine_and_benchmark(tmp_path: Path):
    from bench.throughput import main

    out = tmp_path / "bench.json"
    code = main(
        [
            "--random-weights",
            "tiny",
            "--num-prompts",
            "8",
            "--input-len",
            "24",
            "--output-len",
            "6",
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--max-num-batched-tokens",
            "256",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["num_requests"] == 8 and report["output_tokens"] == 48
    assert report["requests_per_s"] > 0 and report["cost_by_batch_size"]
    assert set(report["cost_at_running"]) == {"64", "256"}
    assert report["cost_at_running"]["256"]["steps"] > 0
