"""`tandem bench serve`: concurrent streaming chats on one GGUF model, tandem's dev profile side by side with
llama-cpp-python's server and llama.cpp's C++ llama-server, and raw llama-cpp-python as the anchor.

For each model, each concurrency N (1 / 4 / 8 / 16 by default) and each server: the server is started
(slotted servers with N slots and the same context per slot), warmed up with N short streams, measured
with N clients each sending --rounds streams of exactly --max-tokens tokens back to back, and stopped;
one server at a time, never two at once. Reported per level: aggregate output tok/s (all streams' tokens /
wall time), each full stream's decode tok/s (median), TTFT and ITL p50/p99, and the streams cut or failed.
The anchor is raw llama-cpp-python in this process (bench/single_stream.py's loop: eval one token at a
time, argmax on the host) at one stream: its decode tok/s and time per token.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.environment import describe_environment
from bench.serve_client import LevelResult, measure_level
from bench.serve_peers import PEERS, ServeSettings, default_llama_server, llama_server_missing, start_peer
from bench.serve_report import goals, print_report

RAW = "llama-cpp-python"


@dataclass(slots=True)
class RawAnchor:
    prompt_len: int
    decode_tok_s: float  # median over runs: tokens / decode time
    itl_ms: float  # 1000 / decode_tok_s
    ttft_ms: float  # median prefill time of the prompt (no HTTP, no template, no sampling)


@dataclass(slots=True)
class PeerResult:
    peer: str
    levels: list[LevelResult] = field(default_factory=list)
    describe: dict[int, dict[str, Any]] = field(default_factory=dict)  # per concurrency: how it started
    load_average: dict[int, list[float]] = field(default_factory=dict)  # per concurrency, after measuring


@dataclass(slots=True)
class ModelResult:
    model: str  # the name given on the command line
    path: str
    raw: RawAnchor | None
    peers: list[PeerResult]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tandem bench serve", description=__doc__.splitlines()[0])
    models_help = "smollm2 (the demo model), tiny (tandem's random-weight model) or GGUF paths"
    p.add_argument("--models", nargs="+", default=["smollm2", "tiny"], help=models_help)
    p.add_argument("--concurrency", default="1,4,8,16", help="concurrent clients, comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="streams each client sends, one after another")
    p.add_argument("--max-tokens", type=int, default=128, help="output tokens of every stream")
    p.add_argument("--warmup-tokens", type=int, default=16, help="tokens of each warm-up stream")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every server and the anchor")
    p.add_argument("--context", type=int, default=512, help="context length per stream (per slot)")
    p.add_argument("--peers", nargs="+", choices=[RAW, *PEERS], default=[RAW, *PEERS])
    p.add_argument("--raw-repeats", type=int, default=3, help="anchor runs (after one warm-up run)")
    p.add_argument("--raw-prompt-len", type=int, default=48, help="anchor prompt tokens (~ a chat's)")
    p.add_argument("--llama-server", type=Path, default=None, help="llama-server binary (default: cached)")
    p.add_argument("--keep-logs", type=Path, default=None, help="copy the servers' logs into this folder")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    args.llama_server = args.llama_server or default_llama_server()
    if "llama-server" in args.peers and not args.llama_server.is_file():
        p.error(llama_server_missing(args.llama_server))
    if args.max_tokens < 2 or args.warmup_tokens < 1 or args.rounds < 1 or min(args.concurrency) < 1:
        p.error("--max-tokens must be >= 2, --warmup-tokens, --rounds and --concurrency >= 1")
    return args


def resolve_model(name: str) -> Path:
    if name == "smollm2":
        from backends.demo_model import ensure_demo_model

        return ensure_demo_model()
    if name == "tiny":
        from backends.tiny_model import make_tiny_model

        return make_tiny_model(Path.home() / ".cache" / "tandem" / "models" / "tiny").gguf_path
    path = Path(name).expanduser()
    if not path.is_file():
        raise SystemExit(f"tandem bench serve: {name} is neither smollm2, tiny nor a GGUF file")
    return path


def run_raw_anchor(args: argparse.Namespace, path: Path) -> RawAnchor:
    import statistics

    import llama_cpp

    from bench.single_stream import run_raw

    probe = llama_cpp.Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    vocab = probe.n_vocab()
    probe.close()
    rng = random.Random(0)
    prompts = [[rng.randrange(100, vocab - 100) for _ in range(args.raw_prompt_len)]
               for _ in range(args.raw_repeats + 1)]  # fmt: skip
    settings = argparse.Namespace(
        prompt_len=args.raw_prompt_len, gen_len=args.max_tokens, threads=args.threads
    )
    runs = run_raw(settings, path, prompts)
    decode = statistics.median(r.decoded / r.decode_s for r in runs)
    return RawAnchor(
        args.raw_prompt_len, decode, 1000 / decode, 1000 * statistics.median(r.prefill_s for r in runs)
    )


def measure_peer(
    args: argparse.Namespace, result: PeerResult, n: int, settings: ServeSettings, out: Any
) -> None:
    out.write(f"  {result.peer}, {n} stream(s) ...\n")
    out.flush()
    peer = start_peer(result.peer, settings, n)
    try:
        warm = measure_level(peer.load_for(args.warmup_tokens), n, 1, first_index=10_000)
        if warm.ok != warm.streams:
            out.write(f"    warm-up: {warm.ok}/{warm.streams} full streams ({warm.error_kinds})\n")
        level = measure_level(peer.load_for(args.max_tokens), n, args.rounds)
    finally:
        peer.server.stop()
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            (args.keep_logs / f"{result.peer}-{n}.log").write_text(peer.server.log_tail(10**7))
    result.levels.append(level)
    result.describe[n] = peer.describe
    result.load_average[n] = [round(x, 2) for x in os.getloadavg()]


def run(args: argparse.Namespace, out: Any) -> list[ModelResult]:
    results = []
    with tempfile.TemporaryDirectory(prefix="tandem-bench-serve-") as workdir:
        for name in args.models:
            path = resolve_model(name)
            out.write(f"{name} ({path.name}):\n")
            raw = run_raw_anchor(args, path) if RAW in args.peers else None
            settings = ServeSettings(path, args.threads, args.context, Path(workdir), args.llama_server)
            peers = [PeerResult(peer) for peer in args.peers if peer != RAW]
            for n in args.concurrency:  # the peers of one level back to back: the same load around them
                for peer in peers:
                    measure_peer(args, peer, n, settings, out)
            results.append(ModelResult(name, str(path), raw, peers))
    return results


def versions(args: argparse.Namespace) -> dict[str, str]:
    import importlib.metadata
    import subprocess

    found = {"llama-cpp-python": importlib.metadata.version("llama-cpp-python")}
    if "llama-server" in args.peers:
        reply = subprocess.run([str(args.llama_server), "--version"], capture_output=True, text=True)
        found["llama-server"] = " ".join((reply.stdout + reply.stderr).split())
    return found


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through measure_peer's finally: no server left running


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    results = run(args, sys.stdout)
    verdicts = {r.model: goals(r) for r in results}
    print_report(args, results, verdicts, sys.stdout)
    if args.json is not None:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}
        record = {
            "environment": describe_environment(argv, command="tandem bench serve", with_torch=False),
            "versions": versions(args),
            "settings": settings,
            "results": [asdict(r) for r in results],
            "goals": verdicts,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
