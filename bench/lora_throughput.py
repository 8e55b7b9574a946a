"""`tandem bench lora`: the paged engine's offline throughput with 1, 4 and 16 distinct LoRA adapters mixed
in each batch, next to the base model alone (the ratio is the figure; vLLM, S-LoRA report small slowdowns).

One engine with random weights of a real shape (`--random-weights tiny` on CPU, `llama-3-8b` on a GPU) and
max_loras slots for the most adapters asked; random rank-r adapters on all seven target modules, made in
memory (the PEFT loader is tested in tests/test_paged_lora.py). Every phase runs the same requests (greedy,
ignore_eos, prefix caching off so phases do not feed each other) with request i on adapter i mod N; each is
repeated and the median run is reported.

    tandem bench lora --random-weights tiny --threads 1 --json bench/results/cpu-tiny-lora.json
    tandem bench lora --random-weights llama-3-8b --num-prompts 256 --input-len 512 --output-len 128 \\
        --max-num-seqs 256 --json bench/results/h100-llama-3-8b-lora.json     # on a GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from backends.base import GenerationRequest, SamplingParams
from bench.environment import describe_environment

if TYPE_CHECKING:
    from backends.paged.engine import LLMEngine
    from backends.paged.lora import LoraAdapter


@dataclass(frozen=True, slots=True)
class Phase:
    adapters: int  # distinct adapters in the workload (0: the base model alone)
    elapsed_s: float  # median of the repeats
    output_tokens_per_s: float
    total_tokens_per_s: float
    relative: float  # output tokens/s over the base's
    steps: int
    lora_loads: int  # adapters copied into a slot during the phase (0 once all are resident)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tandem bench lora", description=__doc__.splitlines()[0])
    p.add_argument("--random-weights", choices=["tiny", "llama-3-8b"], default="tiny")
    p.add_argument("--adapters", default="1,4,16", help="comma-separated numbers of distinct adapters")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    args.adapter_counts = sorted({int(n) for n in args.adapters.split(",")})
    if min(args.adapter_counts) < 1:
        p.error("--adapters: counts must be at least 1 (the base alone always runs)")
    return args


def random_adapter(engine: LLMEngine, name: str, uid: int, rank: int, seed: int) -> LoraAdapter:
    """A rank-`rank` adapter on every target module (scaling folded into B, as the loader does)."""
    import torch

    from backends.paged.lora import LoraAdapter, LoraWeights
    from backends.paged.lora_slots import LoraSlots

    assert engine.runner.lora is not None
    slots: LoraSlots = engine.runner.lora
    gen = torch.Generator().manual_seed(seed)
    dtype = slots.linears[next(iter(slots.linears))].a.dtype
    weights = {}
    for module, lin in slots.linears.items():
        bounds = (*lin.shard_starts, lin.b.shape[1])
        for shard, i in lin.shard_index.items():
            a = torch.randn(rank, lin.a.shape[2], generator=gen) * 0.02
            b = torch.randn(bounds[i + 1] - bounds[i], rank, generator=gen) * 0.02
            weights[(module, shard)] = LoraWeights(a.to(dtype), b.to(dtype))
    return LoraAdapter(name, uid, Path("random"), rank, 1.0, weights)


def run_phase(engine: LLMEngine, prompts: list[list[int]], output_len: int, names: list[str | None]) -> float:
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(GenerationRequest(f"lora-{i}", prompt, params, adapter=names[i % len(names)]))
    started = time.perf_counter()
    while engine.has_unfinished():
        engine.step()  # each step waits for its sampled ids, so the clock sees finished device work
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from backends.paged.config import EngineConfig
    from backends.paged.engine import LLMEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    most = max(args.adapter_counts)
    config = EngineConfig(
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_kv_blocks=args.num_kv_blocks,
        dtype=args.dtype,
        device=args.device,
        enable_prefix_caching=False,
        max_loras=most,
        max_lora_rank=args.rank,
    )
    engine = LLMEngine.from_random(args.random_weights, config, seed=args.seed)
    for i in range(most):
        engine.adapters.add(random_adapter(engine, f"lora{i}", engine.adapters.new_uid(), args.rank, i))
    gc.collect()
    gc.freeze()
    rng = random.Random(args.seed)
    max_in = min(args.input_len, engine.max_model_len - args.output_len - 1)
    prompts = [[rng.randrange(engine.vocab_size) for _ in range(max_in)] for _ in range(args.num_prompts)]
    total_tokens = len(prompts) * (max_in + args.output_len)
    output_tokens = len(prompts) * args.output_len
    # Warm-up (kernel compilation on a GPU; every adapter made resident once).
    run_phase(engine, prompts[: min(len(prompts), most)], 2, [f"lora{i}" for i in range(most)])

    phases: list[Phase] = []
    base_rate = 0.0
    for count in (0, *args.adapter_counts):
        names: list[str | None] = [None] if count == 0 else [f"lora{i}" for i in range(count)]
        loads, steps = engine.stats.num_lora_loads, engine.stats.num_steps
        times = [run_phase(engine, prompts, args.output_len, names) for _ in range(args.repeats)]
        elapsed = statistics.median(times)
        rate = output_tokens / elapsed
        base_rate = base_rate or rate
        phases.append(
            Phase(
                count,
                elapsed,
                rate,
                total_tokens / elapsed,
                rate / base_rate,
                (engine.stats.num_steps - steps) // args.repeats,
                engine.stats.num_lora_loads - loads,
            )
        )
    runner = engine.runner
    print(
        f"LoRA throughput: random:{args.random_weights} on {runner.device} ({str(runner.dtype)[6:]}), "
        f"{len(prompts)} requests x {max_in} prompt + {args.output_len} output tokens, rank {args.rank}, "
        f"max_loras {most}, median of {args.repeats}\n"
    )
    print(
        f"{'adapters':<10}{'elapsed s':>11}{'output tok/s':>14}{'total tok/s':>13}{'vs base':>9}{'steps':>7}"
    )
    for ph in phases:
        label = "base" if ph.adapters == 0 else str(ph.adapters)
        print(
            f"{label:<10}{ph.elapsed_s:>11.3f}{ph.output_tokens_per_s:>14.1f}{ph.total_tokens_per_s:>13.1f}"
            f"{ph.relative:>8.2f}x{ph.steps:>7}"
        )
    if args.json is not None:
        record = {
            "environment": describe_environment(argv, "tandem bench lora"),
            "model": f"random:{args.random_weights}",
            "device": str(runner.device),
            "dtype": str(runner.dtype).removeprefix("torch."),
            "rank": args.rank,
            "max_loras": most,
            "num_requests": len(prompts),
            "input_len": max_in,
            "output_len": args.output_len,
            "phases": [asdict(ph) for ph in phases],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
