"""Modelfiles carry over from Ollama: parsing, and create / show / copy / delete against a real server."""

from __future__ import annotations

import subprocess
import sys

import httpx
import ollama
import pytest

from gateway.modelfile import ModelfileError, parse_modelfile
from tests.conftest import model_entry, start_server

MODELFILE = '''
# a comment
FROM ./model.gguf
SYSTEM """You are a pirate.
Answer briefly."""
PARAMETER temperature 0.3
PARAMETER num_predict 5
PARAMETER stop "<|im_end|>"
PARAMETER stop "###"
PARAMETER num_ctx 1024
PARAMETER num_gpu 1
MESSAGE user Who are you?
MESSAGE assistant """A pirate."""
'''


def test_parse_modelfile():
    parsed = parse_modelfile(MODELFILE)
    assert parsed.base == "./model.gguf"
    assert parsed.system == "You are a pirate.\nAnswer briefly."
    assert parsed.parameters == {"temperature": 0.3, "max_tokens": 5, "stop": ["<|im_end|>", "###"]}
    assert parsed.context_length == 1024
    assert parsed.ignored_parameters == ["num_gpu"]
    assert [(m.role, m.content) for m in parsed.messages] == [
        ("user", "Who are you?"),
        ("assistant", "A pirate."),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SYSTEM hi", "needs FROM"),
        ("FROM x\nPARAMETER temperature warm", "line 2: parameter temperature needs a float"),
        ("FROM x\nPARAMETER flavour 3", "line 2: unknown parameter 'flavour'"),
        ("FROM x\nMESSAGE robot hi", "line 2: MESSAGE role must be one of"),
        ("FROM x\nBANANA 1", "line 2: unknown instruction BANANA"),
        ('FROM x\nSYSTEM """never closed', 'line 2: unterminated """ block'),
    ],
)
def test_modelfile_errors_name_the_line(text, message):
    with pytest.raises(ModelfileError, match=message):
        parse_modelfile(text)


@pytest.fixture(scope="module")
def store_server(tiny_llama, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("store")
    config = {"profile": "dev", "profiles": {"dev": {"models": [model_entry(tiny_llama, "dev")]}}}
    server = start_server(config, workdir)
    yield server, workdir
    server.stop()


def test_tandem_create_from_a_modelfile(store_server, tiny_llama, tmp_path):
    server, _ = store_server
    (tmp_path / "model.gguf").symlink_to(tiny_llama.gguf_path)
    (tmp_path / "Modelfile").write_text(MODELFILE)
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "create", "pirate", "-f", str(tmp_path / "Modelfile"),
         "--url", server.base_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "success" in result.stdout and "ignoring runtime-only parameter num_gpu" in result.stdout

    client = ollama.Client(host=server.base_url)
    assert "pirate:latest" in [m.model for m in client.list().models]
    assert "pirate" in [m["id"] for m in httpx.get(f"{server.v1}/models").json()["data"]]
    shown = client.show("pirate")
    assert 'SYSTEM """You are a pirate.' in shown.modelfile
    assert (
        "PARAMETER num_predict 5" in shown.modelfile
        and 'MESSAGE assistant """A pirate."""' in shown.modelfile
    )
    assert "num_ctx 1024" in shown.parameters
    reply = client.chat(model="pirate", messages=[{"role": "user", "content": "hello"}])
    assert reply.eval_count <= 5  # PARAMETER num_predict 5
    # the system prompt and the MESSAGE preamble precede the conversation
    plain = client.chat(
        model="tiny", messages=[{"role": "user", "content": "hello"}], options={"num_predict": 1}
    )
    assert reply.prompt_eval_count > plain.prompt_eval_count + 10


def test_created_models_persist_across_restarts(store_server, tiny_llama, tmp_path_factory):
    server, workdir = store_server
    client = ollama.Client(host=server.base_url)
    client.create(model="keeper", from_="tiny", system="Remember me.")
    assert (workdir / "home" / "models" / "created" / "dev" / "keeper.json").exists()  # its profile's
    config = {"profile": "dev", "profiles": {"dev": {"models": [model_entry(tiny_llama, "dev")]}}}
    again = start_server(config, workdir)  # same TANDEM_HOME
    try:
        assert "keeper:latest" in [m.model for m in ollama.Client(host=again.base_url).list().models]
        assert "Remember me." in ollama.Client(host=again.base_url).show("keeper").modelfile
    finally:
        again.stop()


def test_copy_and_delete(store_server):
    server, _ = store_server
    client = ollama.Client(host=server.base_url)
    client.create(model="original", from_="tiny", parameters={"temperature": 0.1})
    client.copy("original", "duplicate")
    names = [m.model for m in client.list().models]
    assert "original:latest" in names and "duplicate:latest" in names
    client.delete("duplicate")
    assert "duplicate:latest" not in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as missing:
        client.delete("duplicate")
    assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as configured:
        client.delete("tiny")
    assert configured.value.status_code == 400 and "config file" in configured.value.error


def test_create_errors(store_server):
    server, _ = store_server
    client = ollama.Client(host=server.base_url)
    for kwargs, expected in [
        (dict(from_="/no/such/model.gguf"), "not a model name"),
        (dict(from_="tiny", adapters={"lora.gguf": "sha256:00"}), "ADAPTER"),
        (dict(from_="tiny", template="{{ .Prompt }}"), "Go template"),
        (dict(from_="tiny", parameters={"flavour": 1}), "unknown parameter"),
    ]:
        with pytest.raises(ollama.ResponseError) as caught:
            client.create(model="broken", **kwargs)
        assert caught.value.status_code == 400 and expected in caught.value.error
