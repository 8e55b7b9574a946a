"""`python -m bench.single_stream`: one request at a time on one GGUF file, prefill and decode tokens/s of
raw llama-cpp-python, tandem's llama.cpp backend (the dev profile) and the paged engine (prod).

Each runner gets the same random prompts (a fresh one per repeat, so no prefix cache helps) and decodes
greedily with ignore_eos for exactly --gen-len tokens. Raw llama-cpp-python: prefill = one `eval` of the
prompt, decode = `eval` of one token at a time (argmax on the host). tandem's backends are driven through
the Backend protocol as the gateway drives them: prefill tok/s = prompt tokens / time to the first token
(which includes sampling that token), decode tok/s = the other tokens / the time after the first. The
median of --repeats runs is reported, after one warm-up run each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backends.base import Backend, GenerationRequest, SamplingParams
from bench.environment import describe_environment

RUNNERS = ("llama-cpp-python", "tandem-llamacpp", "tandem-paged")


@dataclass(frozen=True, slots=True)
class Run:
    prefill_s: float
    decode_s: float
    decoded: int  # tokens after the first one (raw llama.cpp: all of them)


@dataclass(slots=True)
class RunnerResult:
    runner: str
    prefill_tok_s: float
    decode_tok_s: float
    runs: list[Run]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.single_stream", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="GGUF file (default: the demo model, SmolLM2)")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for llama.cpp and torch")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the paged engine's")
    p.add_argument("--runners", nargs="+", choices=RUNNERS, default=list(RUNNERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    return p.parse_args(argv)


def _prompts(args: argparse.Namespace, vocab: int) -> list[list[int]]:
    rng = random.Random(args.seed)
    return [
        [rng.randrange(100, vocab - 100) for _ in range(args.prompt_len)] for _ in range(args.repeats + 1)
    ]


def _context(args: argparse.Namespace) -> int:
    return args.prompt_len + args.gen_len + 8


def run_raw(args: argparse.Namespace, path: Path, prompts: list[list[int]]) -> list[Run]:
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=_context(args), n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)  # fmt: skip
    vocab = llm.n_vocab()
    runs = []
    for prompt in prompts:
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        prefilled = time.perf_counter()
        for _ in range(args.gen_len):  # without logits_all, eval keeps no logits: read the context's own
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
            llm.eval([int(np.argmax(logits))])
        runs.append(Run(prefilled - started, time.perf_counter() - prefilled, args.gen_len))
    llm.close()
    return runs[1:]


async def _drive(backend: Any, prompts: list[list[int]], gen_len: int) -> list[Run]:
    runs = []
    for i, prompt in enumerate(prompts):
        params = SamplingParams(max_tokens=gen_len, temperature=0.0, ignore_eos=True)
        started = time.perf_counter()
        first = None
        tokens = 0
        async for chunk in backend.generate(GenerationRequest(f"bench-{i}", prompt, params)):
            tokens += len(chunk.token_ids)
            if first is None and chunk.token_ids:
                first = time.perf_counter()
        assert first is not None and tokens == gen_len, (tokens, gen_len)
        runs.append(Run(first - started, time.perf_counter() - first, tokens - 1))
    await backend.aclose()
    return runs[1:]


def run_tandem(args: argparse.Namespace, path: Path, prompts: list[list[int]], runner: str) -> list[Run]:
    backend: Backend
    if runner == "tandem-llamacpp":
        from backends.llamacpp.backend import LlamaCppBackend

        backend = LlamaCppBackend.load(path, model_name="bench", context_length=_context(args), max_queued=4,
                                       threads=args.threads)  # fmt: skip
    else:
        import torch

        from backends.paged.backend import PagedBackend
        from backends.paged.config import EngineConfig

        torch.set_num_threads(args.threads)
        config = EngineConfig(dtype=args.dtype, device="cpu", max_num_seqs=4, enable_prefix_caching=False,
                              max_model_len=_context(args))  # fmt: skip
        backend = PagedBackend.load(path, config, "bench")
    return asyncio.run(_drive(backend, prompts, args.gen_len))


def summarize(runner: str, prompt_len: int, runs: list[Run]) -> RunnerResult:
    prefill = statistics.median(prompt_len / r.prefill_s for r in runs)
    decode = statistics.median(r.decoded / r.decode_s for r in runs)
    return RunnerResult(runner, prefill, decode, runs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model is None:
        from backends.demo_model import ensure_demo_model

        args.model = ensure_demo_model()
    from backends.paged.gguf_config import model_config_from_gguf, open_gguf

    vocab = model_config_from_gguf(open_gguf(args.model)).vocab_size
    prompts = _prompts(args, vocab)
    results = []
    for runner in args.runners:
        runs = (
            run_raw(args, args.model, prompts)
            if runner == RUNNERS[0]
            else run_tandem(args, args.model, prompts, runner)
        )
        results.append(summarize(runner, args.prompt_len, runs))
    out = sys.stdout
    out.write(f"\n{args.model.name}: {args.prompt_len}-token prompts, {args.gen_len} tokens out, "
              f"{args.threads} threads, median of {args.repeats}\n\n")  # fmt: skip
    out.write(f"{'':<20}{'prefill tok/s':>15}{'decode tok/s':>15}\n")
    for r in results:
        out.write(f"{r.runner:<20}{r.prefill_tok_s:>15.1f}{r.decode_tok_s:>15.1f}\n")
    if args.json is not None:
        record = {
            "environment": describe_environment(argv, command="python -m bench.single_stream"),
            "model": str(args.model),
            "prompt_len": args.prompt_len,
            "gen_len": args.gen_len,
            "threads": args.threads,
            "paged_dtype": args.dtype,
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
