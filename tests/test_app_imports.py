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


def test_the_served_app_imports_none_of_what_only_some_requests_need():
    code = (
        "import sys; import gateway.app, gateway.cli; "
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({NOT_AT_START!r})); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
