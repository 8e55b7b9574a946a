"""`tandem bench throughput`: offline throughput of the paged engine, and its CPU-side cost per step.

All requests are submitted at once to the synchronous LLMEngine (ignore_eos, so every request produces
exactly its output length), then the engine steps until done. Reported: requests/s, output tokens/s,
total tokens/s; the engine's CPU-side time per step (schedule, prepare inputs, postprocess, each measured
separately) at the batch sizes observed, and in a second phase at exactly 64 and 256 running (decoding)
sequences. `--compare hf` runs Hugging Face transformers' generate() on the same weights in static
batches and prints the ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from backends.base import GenerationRequest, SamplingParams
from bench.environment import describe_environment

if TYPE_CHECKING:
    from backends.paged.engine import LLMEngine

OVERHEAD_BATCHES = (64, 256)


@dataclass(frozen=True, slots=True)
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.output_lens)


@dataclass(slots=True)
class PhaseCost:
    """Mean milliseconds per step of each CPU-side phase (and of the model run, for scale)."""

    steps: int
    schedule_ms: float
    prepare_ms: float
    postprocess_ms: float
    execute_ms: float

    @property
    def cpu_ms(self) -> float:
        return self.schedule_ms + self.prepare_ms + self.postprocess_ms


@dataclass(slots=True)
class Report:
    model: str
    device: str
    dtype: str
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    elapsed_s: float
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    steps: int
    preemptions: int
    cost_by_batch_size: dict[str, PhaseCost] = field(default_factory=dict)
    cost_at_running: dict[str, PhaseCost] = field(default_factory=dict)
    hf: dict[str, float] | None = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tandem bench throughput", description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="Hugging Face checkpoint directory or GGUF file")
    source.add_argument(
        "--random-weights", choices=["tiny", "llama-3-8b"], help="random model of a real shape"
    )
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument(
        "--dataset",
        choices=["random", "sharegpt"],
        default="random",
        help="sharegpt: a generated length distribution, mean ~200 prompt / ~180 output tokens",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--skip-overhead", action="store_true", help="skip the 64/256-running-sequences phase")
    p.add_argument("--compare", choices=["hf"], default=None)
    p.add_argument("--hf-batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    if args.model is None and args.random_weights is None:
        args.random_weights = "tiny"
    return args


def make_workload(args: argparse.Namespace, vocab_size: int, max_len: int) -> Workload:
    rng = random.Random(args.seed)
    if args.dataset == "sharegpt":
        # Log-normal lengths: mean exp(mu + sigma^2 / 2) ~ 200 prompt and ~180 output tokens.
        def draw(mean: float, sigma: float) -> int:
            return max(4, round(rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)))

        pairs = [(draw(200, 0.9), draw(180, 0.8)) for _ in range(args.num_prompts)]
    else:
        pairs = [(args.input_len, args.output_len)] * args.num_prompts
    prompts, outputs = [], []
    for n_in, n_out in pairs:
        n_in = min(n_in, max_len - 2)
        n_out = max(1, min(n_out, max_len - n_in - 1))
        prompts.append([rng.randrange(vocab_size) for _ in range(n_in)])
        outputs.append(n_out)
    return Workload(prompts, outputs)


def build_engine(args: argparse.Namespace):
    from backends.paged.config import EngineConfig
    from backends.paged.engine import LLMEngine

    config = EngineConfig(
        max_num_seqs=max(args.max_num_seqs, max(OVERHEAD_BATCHES) if not args.skip_overhead else 1),
        max_num_batched_tokens=args.max_num_batched_tokens,
        block_size=args.block_size,
        num_kv_blocks=args.num_kv_blocks,
        dtype=args.dtype,
        device=args.device,
        enable_prefix_caching=not args.no_prefix_caching,
    )
    if args.model is not None:
        from backends.paged.gguf_engine import engine_from_gguf
        from backends.paged.loader import is_gguf

        if is_gguf(args.model):
            return engine_from_gguf(args.model, config, model_name=str(args.model))
        return LLMEngine.from_pretrained(args.model, config, model_name=str(args.model))
    return LLMEngine.from_random(args.random_weights, config, seed=args.seed)


def _requests(workload: Workload, tag: str) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            f"{tag}-{i}", prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
        )
        for i, (prompt, n) in enumerate(zip(workload.prompts, workload.output_lens, strict=True))
    ]


def _cost(timings: list) -> PhaseCost:
    def mean_ms(name: str) -> float:
        return 1000.0 * statistics.fmean(getattr(t, name) for t in timings)

    return PhaseCost(
        len(timings), mean_ms("schedule"), mean_ms("prepare"), mean_ms("postprocess"), mean_ms("execute")
    )


def _bucket(n: int) -> str:
    """Power-of-two ranges of batch sizes: 1, 2-3, 4-7, ..."""
    low = 1 << (n.bit_length() - 1)
    return "1" if low == 1 else f"{low}-{2 * low - 1}"


def run_throughput(engine: LLMEngine, workload: Workload) -> tuple[float, dict[str, PhaseCost]]:
    for request in _requests(workload, "bench"):
        engine.add_request(request)
    by_size: dict[int, list] = defaultdict(list)
    started = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
        timing = engine.last_step
        if timing.num_seqs:
            by_size[timing.num_seqs].append(timing)
    elapsed = time.perf_counter() - started
    buckets: dict[str, list] = defaultdict(list)
    for size in sorted(by_size):
        buckets[_bucket(size)] += by_size[size]
    return elapsed, {name: _cost(timings) for name, timings in buckets.items()}


def run_overhead(
    engine: LLMEngine, running: int, vocab_size: int, seed: int, steps: int = 12
) -> PhaseCost | None:
    """Per-step cost with exactly `running` sequences decoding (short prompts, outputs that do not end)."""
    if running > min(engine.config.max_num_seqs, engine.config.max_num_batched_tokens):
        return None  # the engine can never run that many at once
    prompt_len, warm = 16, 4
    if running * -(-(prompt_len + 64) // engine.config.block_size) > engine.block_manager.num_blocks:
        return None  # not enough KV cache to hold them all
    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab_size) for _ in range(prompt_len)] for _ in range(running)]
    workload = Workload(prompts, [engine.max_model_len - prompt_len - 1] * running)
    for request in _requests(workload, f"overhead{running}"):
        engine.add_request(request)
    # Step until every sequence is decoding, then a few warm-up steps.
    while engine.scheduler.num_waiting or any(s.num_uncomputed_tokens > 1 for s in engine.scheduler.running):
        engine.step()
    for _ in range(warm):
        engine.step()
    timings = []
    for _ in range(steps):
        engine.step()
        if engine.last_step.num_seqs != running:
            break  # preempted for lack of blocks: no longer the batch size asked for
        timings.append(engine.last_step)
    for i in range(running):
        engine.abort(f"overhead{running}-{i}")
    return _cost(timings) if timings else None


def run_hf(args: argparse.Namespace, engine: LLMEngine, workload: Workload) -> dict[str, float]:
    """transformers generate() on the same weights, in static batches of --hf-batch-size (a GGUF file's
    weights as the engine dequantized them)."""
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.model is not None and args.model.is_dir()
        path = args.model if checkpoint else export_hf_checkpoint(engine, Path(tmp))
        runner = engine.runner
        hf = (
            transformers.AutoModelForCausalLM.from_pretrained(path, dtype=runner.dtype)
            .to(runner.device)
            .eval()
        )
    pad = 0
    started = time.perf_counter()
    generated = 0
    order = sorted(range(len(workload.prompts)), key=lambda i: len(workload.prompts[i]))
    with torch.inference_mode():
        for start in range(0, len(order), args.hf_batch_size):
            batch = order[start : start + args.hf_batch_size]
            width = max(len(workload.prompts[i]) for i in batch)
            new = max(workload.output_lens[i] for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(batch):
                prompt = workload.prompts[i]
                ids[row, width - len(prompt) :] = torch.tensor(prompt)
                mask[row, width - len(prompt) :] = 1
            hf.generate(
                ids.to(runner.device),
                attention_mask=mask.to(runner.device),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=pad,
            )
            generated += sum(workload.output_lens[i] for i in batch)  # only what was asked for counts
    elapsed = time.perf_counter() - started
    total = workload.num_prompt_tokens + workload.num_output_tokens
    return {
        "elapsed_s": elapsed,
        "requests_per_s": len(workload.prompts) / elapsed,
        "output_tokens_per_s": generated / elapsed,
        "total_tokens_per_s": total / elapsed,
    }


def export_hf_checkpoint(engine: LLMEngine, out: Path) -> Path:
    """Write the engine's weights (random, or dequantized from a GGUF file) as a Llama or Qwen2 checkpoint
    in Hugging Face's naming."""
    from safetensors.torch import save_file

    cfg = engine.runner.model.config
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    tensors: dict[str, Any] = {}
    for name, param in engine.runner.model.named_parameters():
        tensor = param.detach().cpu().contiguous()
        if ".qkv_proj." in name:
            for part, piece in zip(("q", "k", "v"), tensor.split((q, kv, kv)), strict=True):
                tensors[name.replace(".qkv_proj.", f".{part}_proj.")] = piece.contiguous()
        elif ".gate_up_proj." in name:
            gate, up = tensor.chunk(2)
            tensors[name.replace(".gate_up_proj.", ".gate_proj.")] = gate.contiguous()
            tensors[name.replace(".gate_up_proj.", ".up_proj.")] = up.contiguous()
        else:
            tensors[name] = tensor
    save_file(tensors, str(out / "model.safetensors"))
    if cfg.arch not in ("llama", "qwen2") or cfg.rope.type != "default" or cfg.o_bias:
        raise ValueError(f"cannot export a {cfg.arch} model with {cfg.rope.type} rope for the HF comparison")
    config = {
        "model_type": cfg.arch,
        "architectures": ["Qwen2ForCausalLM" if cfg.arch == "qwen2" else "LlamaForCausalLM"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope.theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": "silu",
    }
    (out / "config.json").write_text(json.dumps(config))
    return out


def print_report(report: Report, out: TextIO = sys.stdout) -> None:
    w = out.write
    w(f"\nmodel {report.model}  device {report.device}  dtype {report.dtype}\n")
    w(
        f"{report.num_requests} requests, {report.prompt_tokens} prompt + {report.output_tokens} output "
        f"tokens, {report.steps} steps, {report.preemptions} preemptions, {report.elapsed_s:.2f} s\n\n"
    )
    w(f"{'':<18}{'requests/s':>12}{'output tok/s':>14}{'total tok/s':>13}\n")
    w(
        f"{'paged engine':<18}{report.requests_per_s:>12.2f}{report.output_tokens_per_s:>14.1f}"
        f"{report.total_tokens_per_s:>13.1f}\n"
    )
    if report.hf is not None:
        hf = report.hf
        w(
            f"{'hf generate':<18}{hf['requests_per_s']:>12.2f}{hf['output_tokens_per_s']:>14.1f}"
            f"{hf['total_tokens_per_s']:>13.1f}\n"
        )
        w(
            f"{'ratio':<18}{report.requests_per_s / hf['requests_per_s']:>11.2f}x"
            f"{report.output_tokens_per_s / hf['output_tokens_per_s']:>13.2f}x"
            f"{report.total_tokens_per_s / hf['total_tokens_per_s']:>12.2f}x\n"
        )

    def table(title: str, rows: dict[str, PhaseCost]) -> None:
        w(
            f"\n{title}\n{'seqs/step':<12}{'steps':>7}{'schedule':>10}{'prepare':>10}{'postproc':>10}"
            f"{'CPU total':>11}{'model':>10}   (ms per step)\n"
        )
        for name, c in rows.items():
            w(
                f"{name:<12}{c.steps:>7}{c.schedule_ms:>10.3f}{c.prepare_ms:>10.3f}{c.postprocess_ms:>10.3f}"
                f"{c.cpu_ms:>11.3f}{c.execute_ms:>10.3f}\n"
            )

    table("engine CPU time per step, by observed batch size", report.cost_by_batch_size)
    if report.cost_at_running:
        table("engine CPU time per step with N sequences decoding", report.cost_at_running)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = build_engine(args)
    gc.collect()
    gc.freeze()  # as the server does: full collections would otherwise stall steps
    runner = engine.runner
    workload = make_workload(args, engine.vocab_size, engine.max_model_len)
    elapsed, by_size = run_throughput(engine, workload)
    stats = engine.stats
    total = workload.num_prompt_tokens + workload.num_output_tokens
    report = Report(
        model=str(args.model) if args.model is not None else f"random:{args.random_weights}",
        device=str(runner.device),
        dtype=str(runner.dtype).removeprefix("torch."),
        num_requests=len(workload.prompts),
        prompt_tokens=workload.num_prompt_tokens,
        output_tokens=workload.num_output_tokens,
        elapsed_s=elapsed,
        requests_per_s=len(workload.prompts) / elapsed,
        output_tokens_per_s=workload.num_output_tokens / elapsed,
        total_tokens_per_s=total / elapsed,
        steps=stats.num_steps,
        preemptions=stats.num_preemptions,
        cost_by_batch_size=by_size,
    )
    if not args.skip_overhead:
        for running in OVERHEAD_BATCHES:
            cost = run_overhead(engine, running, engine.vocab_size, args.seed + running)
            if cost is not None:
                report.cost_at_running[str(running)] = cost
    if args.compare == "hf":
        report.hf = run_hf(args, engine, workload)
    print_report(report)
    if args.json is not None:
        record = {"environment": describe_environment(argv), **asdict(report)}
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
