"""What `tandem serve` imports before it serves: the gateway without torch (dependency direction), and
without what only some requests need (cold start: docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# torch, xgrammar, transformers: the prod engine and grammars; the rest is what remote upstreams, pulls,
# embeddings and the client commands use, imported where they are used
NOT_AT_START = ("torch", "xgrammar", "transformers", "llama_cpp", "numpy", "httpx", "aiohttp",
                "huggingface_hub", "litellm", "rich")  # fmt: skip


def _imports_none_of(setup: str, names: set[str] | tuple[str, ...]) -> None:
    """Runs `setup` in a fresh interpreter; fails if it imported any of `names` (a package and its modules,
    or one module)."""
    code = (
        f"import sys; {setup}; names = {sorted(names)!r}; "
        "bad = sorted(m for m in sys.modules if any(m == n or m.startswith(n + '.') for n in names)); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_the_served_app_imports_none_of_what_only_some_requests_need():
    _imports_none_of("import gateway.app, gateway.cli", NOT_AT_START)


def test_a_preloaded_llama_cpp_model_is_checked_by_its_load_alone(tiny_llama, tmp_path):
    """`tandem serve` begins loading such a model before it imports the app (gateway.startup.begin_preloads):
    reading the file with tandem's own GGUF reader first (numpy, gguf) would only delay that load."""
    model, store = str(tiny_llama.gguf_path), str(tmp_path)
    setup = (
        "from pathlib import Path; "
        "from gateway.config import ModelSpec, Profile; from gateway.model_store import ModelStore; "
        "from gateway.settings import Settings; from gateway.startup import build_manager; "
        f"spec = ModelSpec(name='tiny', backend='llamacpp', path={model!r}, preload=True); "
        f"build_manager(Profile(models=[spec]), 'dev', Settings(), 'test', ModelStore(Path({store!r})))"
    )
    _imports_none_of(setup, {"gguf", "numpy", "llama_cpp"})


def test_the_command_line_and_the_model_manager_import_no_fastapi():
    """`tandem serve` builds its models and begins their loads before it imports the request path
    (gateway.serve._serve): FastAPI and the protocol modules, ~0.5-1 s, then overlap the load instead of
    preceding it. gateway.auth's names load on first use, APIError lives apart from the handlers."""
    names = {"fastapi", "starlette", "gateway.openai_protocol", "gateway.errors", "gateway.auth.access"}
    _imports_none_of("import gateway.cli, gateway.startup, gateway.registry", names)


def test_the_command_line_parses_before_it_imports_pydantic_or_llama_cpp():
    """`tandem serve` reads its config and begins its model's load before anything else heavy: the parser
    imports no pydantic, YAML, FastAPI or llama.cpp, so the collector can be off from its first heavy
    import (gateway.cli.main) and the load begins sooner."""
    names = {"pydantic", "yaml", "fastapi", "llama_cpp", "numpy", "gguf", "httpx"}
    _imports_none_of("import gateway.cli; gateway.cli.build_parser()", names)


def test_the_llama_cpp_backend_loads_a_model_without_the_gguf_reader():
    """The gguf package (and its own numpy-heavy imports) is for checking LoRA adapters, when one loads."""
    _imports_none_of("import backends.llamacpp.backend", {"gguf"})
