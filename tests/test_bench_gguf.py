"""The benchmarks on GGUF files: single-stream (all three runners) and offline throughput with the Hugging
Face comparison on the dequantized weights."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")


def test_single_stream_benchmark_on_the_tiny_gguf(tiny_llama, tmp_path, capsys):
    from bench.single_stream import RUNNERS, main

    out = tmp_path / "single.json"
    argv = ["--model", str(tiny_llama.gguf_path), "--prompt-len", "16", "--gen-len", "4", "--repeats", "1",
            "--threads", "1", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["environment"]["command"].startswith("python -m bench.single_stream --model")
    assert [r["runner"] for r in record["results"]] == list(RUNNERS)
    for result in record["results"]:
        assert result["prefill_tok_s"] > 0 and result["decode_tok_s"] > 0
        assert [run["decoded"] for run in result["runs"]] in ([4], [3])  # raw: all 4; tandem: after the first
    assert "tandem-paged" in capsys.readouterr().out


def test_throughput_benchmark_on_a_gguf_compares_with_hf(tiny_model, tmp_path):
    """Both archs: the engine's dequantized weights are exported for transformers (qwen2 with its biases)."""
    from bench.throughput import main

    out = tmp_path / "throughput.json"
    argv = ["--model", str(tiny_model.gguf_path), "--num-prompts", "4", "--input-len", "8",
            "--output-len", "4", "--compare", "hf", "--skip-overhead", "--threads", "1", "--dtype", "float32",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["model"] == str(tiny_model.gguf_path) and record["output_tokens"] == 16
    assert record["hf"]["output_tokens_per_s"] > 0
