"""A new user's first hour, as they would try it: the built-in profiles, start-up checks, JSON bodies sent
without a JSON content type, the CLI's help and output, and errors that say what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.cli import build_parser
from gateway.config import ModelSpec
from gateway.model_store import ModelStore
from gateway.serve import created_models_dir
from gateway.settings import Settings
from tests.conftest import model_entry, start_server

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": False}


def _tandem(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          env={**clean, **(env or {})}, cwd=cwd, timeout=120)  # fmt: skip


def _write_config(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "tandem.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ---- the built-in default serves both profiles -----------------------------------------------------------


def test_prod_profile_of_the_builtin_default_serves_the_demo_model(tmp_path):
    """`TANDEM_PROFILE=prod tandem serve` outside the checkout serves the demo model on the paged engine
    (that it answers, on both profiles, is tests/test_demo_model.py's README test)."""
    listing = _tandem("models", "--profile", "prod", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "paged" in listing.stdout and "default" in listing.stdout


def test_a_profile_without_models_is_a_start_error(tmp_path):
    config = {"profiles": {"dev": {"models": [{"name": "a", "backend": "llamacpp", "path": "/m/a.gguf"}]},
                           "prod": {"models": []}}}  # fmt: skip
    path = _write_config(tmp_path, config)
    result = _tandem("serve", "--config", str(path), "--profile", "prod", "--port", "0")
    assert result.returncode == 2
    assert f"{path}: profiles.prod.models: profile 'prod' has no models" in result.stderr
    assert "Traceback" not in result.stderr


# ---- formats are checked at start --------------------------------------------------------------------------


def test_backends_check_the_model_format_at_start(tmp_path, tiny_llama):
    hf_under_llamacpp = {"profiles": {"dev": {"models": [
        {"name": "a", "backend": "llamacpp", "path": str(tiny_llama.hf_dir)}]}}}  # fmt: skip
    result = _tandem("serve", "--config", str(_write_config(tmp_path, hf_under_llamacpp)), "--port", "0")
    assert result.returncode == 2, result.stderr
    assert "profiles.dev.models[0].path: backend 'llamacpp' expected a GGUF file" in result.stderr
    assert "served by backend: paged" in result.stderr

    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a model")
    junk_under_paged = {"profile": "prod", "profiles": {"prod": {"models": [
        {"name": "a", "backend": "paged", "path": str(text_file)}]}}}  # fmt: skip
    result = _tandem("serve", "--config", str(_write_config(tmp_path, junk_under_paged)), "--port", "0")
    assert result.returncode == 2, result.stderr
    assert "backend 'paged' expected a Hugging Face checkpoint directory" in result.stderr
    assert "Traceback" not in result.stderr


# ---- JSON bodies whatever their content type ---------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_json_bodies_are_read_whatever_the_content_type(server, content_type):
    """`curl -d` sends form encoding; LiteLLM's ollama providers send no content type at all."""
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps(CHAT).encode()
    chat = httpx.post(f"{server.v1}/chat/completions", content=body, headers=headers, timeout=60)
    assert chat.status_code == 200, chat.text
    assert chat.json()["object"] == "chat.completion"
    ollama = {"model": "tiny", "messages": CHAT["messages"], "stream": False, "options": {"num_predict": 4}}
    native = httpx.post(f"{server.base_url}/api/chat", content=json.dumps(ollama).encode(), headers=headers,
                        timeout=60)  # fmt: skip
    assert native.status_code == 200, native.text
    assert native.json()["done"] is True


def test_a_body_that_is_not_json_says_so(server):
    form = {"content-type": "application/x-www-form-urlencoded"}
    reply = httpx.post(f"{server.v1}/chat/completions", content=b"model=tiny&prompt=hi", headers=form)
    assert reply.status_code == 400
    assert "could not parse the JSON body" in reply.json()["error"]["message"]
    native = httpx.post(f"{server.base_url}/api/chat", content=b"model=tiny", headers=form)
    assert native.status_code == 400
    assert "could not parse the JSON body" in native.json()["error"]


def test_litellm_ollama_providers_work_through_tandem(server):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    for provider in ("ollama_chat", "ollama"):
        reply = litellm.completion(model=f"{provider}/tiny", api_base=server.base_url, max_tokens=4,
                                   messages=CHAT["messages"], timeout=60)  # fmt: skip
        assert reply.choices[0].message.content is not None, provider
        assert reply.usage.completion_tokens > 0, provider


# ---- the CLI -----------------------------------------------------------------------------------------------


def test_help_lists_every_command():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    assert len(commands) >= 10
    result = _tandem("--help")
    assert result.returncode == 0
    for name in commands:
        assert f"    {name} " in result.stdout or f"    {name}\n" in result.stdout, name


def test_bench_help_describes_each_benchmark():
    result = _tandem("bench", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps to the terminal's width
    assert "bench_args" not in text
    assert "throughput the paged engine's offline throughput, next to Hugging Face generate" in text
    assert "gateway the front door's overhead per request, next to LiteLLM's proxy" in text
    own = _tandem("bench", "throughput", "--help")
    assert own.returncode == 0 and "--random-weights" in own.stdout


@pytest.mark.parametrize("server", ["dev"], indirect=True)
def test_client_commands_print_only_their_answer_and_warn_when_keys_do_nothing(server):
    result = _tandem("keys", "create", "--name", "ci", "--url", server.base_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("sk-tandem-")
    assert "HTTP Request" not in result.stderr and "INFO" not in result.stderr
    assert "access control is off" in result.stderr and "TANDEM_MASTER_KEY" in result.stderr


# ---- model_not_found names what the caller may use ---------------------------------------------------------

MASTER = "sk-master-new-user-0123456789"


def test_model_not_found_names_only_the_models_the_key_may_use(tiny_llama, tmp_path):
    entries = [
        model_entry(tiny_llama, "dev"),
        {**model_entry(tiny_llama, "dev"), "name": "secret", "aliases": []},
    ]
    config = {"profile": "dev", "profiles": {"dev": {"models": entries}}}
    running = start_server(config, tmp_path, env={"TANDEM_MASTER_KEY": MASTER})
    try:
        new_key = {"name": "t", "models": ["tiny", "default"]}
        created = httpx.post(f"{running.base_url}/admin/keys", json=new_key,
                             headers={"Authorization": f"Bearer {MASTER}"})  # fmt: skip
        assert created.status_code == 201, created.text
        key = {"Authorization": f"Bearer {created.json()['key']}"}
        reply = httpx.post(f"{running.v1}/chat/completions", json={**CHAT, "model": "tinny"}, headers=key)
        assert reply.status_code == 404
        message = reply.json()["error"]["message"]
        assert "Models you can use: tiny, default." in message and "secret" not in message
        native = httpx.post(f"{running.base_url}/api/chat", json={**CHAT, "model": "secret"}, headers=key)
        assert native.status_code == 404
        assert "not found" in native.json()["error"] and "secret," not in native.json()["error"]
        assert "Models you can use: tiny, default." in native.json()["error"]
        master = httpx.post(f"{running.v1}/chat/completions", json={**CHAT, "model": "tinny"},
                            headers={"Authorization": f"Bearer {MASTER}"})  # fmt: skip
        assert "tiny, default, secret" in master.json()["error"]["message"]
    finally:
        running.stop()


# ---- created models belong to their profile ----------------------------------------------------------------


@pytest.mark.parametrize("server", ["dev"], indirect=True)
def test_created_models_stay_in_the_profile_they_were_made_in(server, tiny_llama):
    name = "made-in-dev"
    body = {"model": name, "from": str(tiny_llama.gguf_path), "stream": False}
    reply = httpx.post(f"{server.base_url}/api/create", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    home = server.log_path.parent / "home"
    settings = Settings(home=home)
    assert (created_models_dir(settings, "dev") / f"{name}.json").exists()
    assert [s.name for s in ModelStore(created_models_dir(settings, "prod")).load()] == []
    httpx.request("DELETE", f"{server.base_url}/api/delete", json={"model": name})


def test_models_created_before_per_profile_storage_are_kept(tmp_path):
    root = tmp_path / "models" / "created"
    legacy = ModelStore(root)
    legacy.save(ModelSpec(name="old", backend="llamacpp", path="/m/old.gguf"))
    settings = Settings(home=tmp_path)
    for profile in ("dev", "prod"):  # each profile adopts them once
        assert [s.name for s in ModelStore(created_models_dir(settings, profile)).load()] == ["old"]
    ModelStore(created_models_dir(settings, "dev")).delete("old")
    assert [s.name for s in ModelStore(created_models_dir(settings, "dev")).load()] == []  # stays deleted
