"""The `tandem` command line: the server, its models, and clients of a running tandem.

Only the argument parser is imported up front; each command imports what it runs (`tandem serve` begins
its model's load as soon as its config is read: gateway.serve).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import cli_chat, cli_create, cli_pull
from gateway.auth.cli import add_cli_commands

if TYPE_CHECKING:
    from gateway.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    from gateway.settings import Settings

    overrides = {
        key: value
        for key in ("config", "profile", "host", "port")
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.serve import serve

    serve(_settings(args))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from gateway.serve import active_config

    active = active_config(_settings(args))
    profile_name, profile, source = active.profile_name, active.profile, active.source
    print(f"profile {profile_name!r} ({source})")
    if not profile.models:
        print("  no models configured")
    rows = [("NAME", "BACKEND", "ALIASES", "PATH")]
    for spec in profile.models:
        path = str(spec.resolved_path()) if spec.path else "-"
        if spec.path and not spec.resolved_path().exists():
            path += {"tiny": " (generated on first serve)", "smollm2": " (downloaded on first serve)"}.get(
                spec.demo or "", " (missing)"
            )
        rows.append((spec.name, spec.backend or "-", ",".join(spec.aliases) or "-", path))  # "-": a route
        for adapter in spec.adapters:  # a model name of its own, run by this model's backend
            where = f"{adapter.resolved_path()}{'' if adapter.resolved_path().exists() else ' (missing)'}"
            rows.append((adapter.name, spec.backend or "-", "-", f"{where} (LoRA adapter of {spec.name})"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows if profile.models else []:
        print(
            "  "
            + "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
            + "  "
            + row[3]
        )
    return 0


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from backends.tiny_model import make_tiny_model

    if args.out_dir is None and args.lora is None:
        print("tandem make-tiny-model: give OUT_DIR, --lora LORA_DIR, or both", file=sys.stderr)
        return 2
    base_model = None
    if args.out_dir is not None:
        model = make_tiny_model(Path(args.out_dir), arch=args.arch, seed=args.seed)
        print(f"GGUF:                    {model.gguf_path}")
        print(f"Hugging Face checkpoint: {model.hf_dir}")
        base_model = str(model.hf_dir)
    if args.lora is not None:
        from backends.tiny_model.lora import make_tiny_lora

        try:
            lora = make_tiny_lora(Path(args.lora), arch=args.arch, rank=args.rank, alpha=args.alpha,
                                  targets=tuple(t for t in args.targets.split(",") if t), seed=args.lora_seed,
                                  use_rslora=args.rslora, base_model=base_model)  # fmt: skip
        except ValueError as exc:
            print(f"tandem make-tiny-model: {exc}", file=sys.stderr)
            return 2
        print(f"LoRA adapter (PEFT):     {lora.peft_dir}")
        print(f"LoRA adapter (GGUF):     {lora.gguf_path}")
    return 0


BENCHMARKS = {
    "throughput": "the paged engine's offline throughput, next to Hugging Face generate",
    "gateway": "the front door's overhead per request, next to LiteLLM's proxy",
    "serve": "concurrent streaming chats on the dev profile, next to llama_cpp.server and llama-server",
    "lora": "the paged engine's offline throughput with 1, 4 and 16 LoRA adapters per batch vs the base",
    "cold-start": "`tandem serve` to the first token, next to llama-server and llama-cpp-python's server",
}


def cmd_bench(args: argparse.Namespace) -> int:
    if args.bench_kind == "throughput":
        from bench.throughput import main as throughput

        return throughput(args.bench_args)
    if args.bench_kind == "serve":
        from bench.serve import main as serve

        return serve(args.bench_args)
    if args.bench_kind == "lora":
        from bench.lora_throughput import main as lora

        return lora(args.bench_args)
    if args.bench_kind == "cold-start":
        from bench.cold_start import main as cold_start

        return cold_start(args.bench_args)
    from bench.gateway_overhead import main as gateway

    return gateway(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--config", type=Path, help="YAML config (default config/tandem.yaml; env TANDEM_CONFIG)"
        )
        sub.add_argument(
            "--profile", help="profile to use (default env TANDEM_PROFILE, else the file's profile:)"
        )

    serve = commands.add_parser("serve", help="serve the active profile's models over HTTP")
    with_config(serve)
    serve.add_argument("--host", help="bind address (default 127.0.0.1; env TANDEM_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; env TANDEM_PORT)")
    serve.set_defaults(handler=cmd_serve)

    models = commands.add_parser("models", help="list the configured models and their backends")
    with_config(models)
    models.set_defaults(handler=cmd_models)

    tiny = commands.add_parser("make-tiny-model", help="write tandem's random-weight model (HF + GGUF)")
    tiny.add_argument("out_dir", nargs="?", help="writes OUT_DIR/hf/ and OUT_DIR/model.gguf")
    tiny.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--lora",
        metavar="LORA_DIR",
        help="also (or only) write a random LoRA adapter for that tiny model: "
        "LORA_DIR/peft/ (PEFT) and LORA_DIR/adapter.gguf (GGUF LoRA), the same numbers",
    )
    tiny.add_argument("--rank", type=int, default=8, help="the adapter's rank r")
    tiny.add_argument("--alpha", type=float, default=16.0, help="the adapter's lora_alpha")
    tiny.add_argument(
        "--targets",
        default="q_proj,k_proj,v_proj,o_proj",
        help="modules it adapts, among q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    )
    tiny.add_argument("--lora-seed", type=int, default=1, help="the adapter's random seed")
    tiny.add_argument("--rslora", action="store_true", help="rsLoRA scaling (alpha / sqrt(r))")
    tiny.set_defaults(handler=cmd_make_tiny_model)

    cli_create.add_commands(commands)
    cli_pull.add_commands(commands)
    cli_chat.add_commands(commands)
    add_cli_commands(commands)  # keys, teams, usage

    bench = commands.add_parser(
        "bench",
        help="benchmarks that print a table and write JSON to bench/results/",
        description="Benchmarks; each prints a table and writes JSON. "
        "`tandem bench KIND --help` for its options.",
    )
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")
    for kind, summary in BENCHMARKS.items():
        # the benchmark parses its own options (and answers --help itself)
        kinds.add_parser(kind, help=summary, add_help=False)
    bench.set_defaults(handler=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = unknown  # a benchmark parses its own options
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.handler is cmd_serve:
        gc.disable()  # until the server is up, from before its first heavy import: gateway.serve.serve
    try:
        return _run(args)
    finally:
        gc.enable()


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from gateway.config import ConfigError
    from gateway.settings import Settings

    try:
        level = Settings().log_level
        logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("gguf").setLevel(logging.WARNING)  # its writer logs every file it writes
        # the client commands' own output is the answer; httpx would log every request before it
        logging.getLogger("httpx").setLevel(logging.WARNING)
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"tandem: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # a TANDEM_* setting
        for error in exc.errors():
            name = "TANDEM_" + "_".join(str(p) for p in error["loc"]).upper()
            print(f"tandem: invalid setting {name}: {error['msg']}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
