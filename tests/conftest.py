"""Fixtures shared by the whole suite: the generated tiny models, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_model(request: pytest.FixtureRequest, tiny_model_root: Path):
    """Both architectures of the random-weight tiny model (HF checkpoint + GGUF of the same weights)."""
    from backends.tiny_model import make_tiny_model

    return make_tiny_model(tiny_model_root / request.param, arch=request.param, seed=0)


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_root: Path):
    from backends.tiny_model import make_tiny_model

    return make_tiny_model(tiny_model_root / "llama", arch="llama", seed=0)
