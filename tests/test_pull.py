"""`tandem pull` / POST /api/pull against a local imitation of the Hugging Face Hub (tests/fake_hub.py).

The server downloads with huggingface_hub itself, pointed at the fake Hub through HF_ENDPOINT.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import httpx
import ollama
import pytest

from gateway.pull import PullError, parse_reference
from tests.conftest import free_port, model_entry, start_server
from tests.fake_hub import FakeHub

BIG = 16 * 2**20  # huggingface_hub writes in 10 MiB chunks: a resume needs a file past one chunk


@pytest.fixture(scope="module")
def hub(tiny_llama):
    hub = FakeHub()
    gguf = tiny_llama.gguf_path.read_bytes()
    checkpoint = {p.name: p.read_bytes() for p in tiny_llama.hf_dir.iterdir() if p.is_file()}
    hub.add_repo("org/tiny-gguf", {"model.gguf": gguf, "README.md": b"# tiny\n"})
    hub.add_repo(
        "org/tiny-hf", {**checkpoint, "README.md": b"# tiny\n", "pytorch_model.bin": b"other format"}
    )
    hub.add_repo("org/two-ggufs", {"two-Q4_K_M.gguf": gguf, "two-Q8_0.gguf": gguf})
    hub.add_repo("org/big-gguf", {"big.gguf": gguf + bytes(BIG - len(gguf))})
    hub.add_repo("org/slow-gguf", {"big.gguf": gguf + bytes(BIG - len(gguf))})
    hub.add_repo("org/broken", {"model.gguf": gguf})
    hub.add_repo("org/stalled", {"model.gguf": gguf})
    hub.failing["org/broken"] = 500
    hub.stalling["org/stalled"] = 4
    hub.throttled["org/slow-gguf"] = 0.1  # 1.6 s for the whole file
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def pull_server(hub, tiny_llama, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pull")
    config = {"profile": "dev", "profiles": {"dev": {"models": [model_entry(tiny_llama, "dev")]}}}
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(workdir / "hf-home"),  # no token or cache of the user's leaks in
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_ETAG_TIMEOUT": "2",  # the stalled repo must fail fast
    }
    server = start_server(config, workdir, env=env)
    yield server, workdir
    server.stop()


def _stored(workdir, name: str) -> dict:
    """The record a pull made, in the store of the profile it was made in (dev)."""
    return json.loads((workdir / "home" / "models" / "created" / "dev" / f"{name}.json").read_text())


def _pull(server, **body) -> httpx.Response:
    return httpx.post(f"{server.base_url}/api/pull", json={"stream": False, **body}, timeout=60)


def test_references_and_default_names():
    assert parse_reference("hf://org/Tiny-GGUF:model.gguf").default_name() == "tiny-gguf-model"
    assert parse_reference("hf://Org/Repo").default_name() == "repo"
    assert parse_reference("hf.co/org/repo:Q4_K_M").default_name() == "repo-q4_k_m"
    assert parse_reference("hf://org/repo:sub/dir/x.GGUF").selector == "sub/dir/x.GGUF"
    assert parse_reference("hf://org/repo:latest").selector is None
    for bad in ("llama3", "hf://justone", "hf://org/repo:../../etc/passwd", "hf://a/b/c"):
        with pytest.raises(PullError) as caught:
            parse_reference(bad)
        assert caught.value.status == 400


def test_pull_a_gguf_with_the_cli(pull_server, hub):
    server, workdir = pull_server
    command = ["pull", "hf://org/tiny-gguf:model.gguf", "--url", server.base_url]
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *command], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pulling model.gguf" in result.stdout and "success: serving as tiny-gguf-model" in result.stdout
    assert not any("README" in r.path for r in hub.requests)  # only the file named

    client = ollama.Client(host=server.base_url)
    assert "tiny-gguf-model:latest" in [m.model for m in client.list().models]
    reply = client.generate(model="tiny-gguf-model", prompt="hello", options={"num_predict": 4})
    assert reply.done and reply.eval_count == 4 and reply.response
    spec = _stored(workdir, "tiny-gguf-model")
    assert spec["backend"] == "llamacpp"
    assert spec["path"] == str(workdir / "home" / "models" / "pulled" / "org" / "tiny-gguf" / "model.gguf")


def test_pull_a_checkpoint_repo_streams_progress_per_file(pull_server, hub):
    server, workdir = pull_server
    events = list(ollama.Client(host=server.base_url).pull("hf://org/tiny-hf", stream=True))
    assert events[0].status == "pulling manifest" and events[-1].status == "success"
    finished = {e.status for e in events if e.total and e.completed == e.total}
    assert {"pulling config.json", "pulling model.safetensors", "pulling tokenizer.json"} <= finished
    digests = {e.status: e.digest for e in events if e.digest}
    model_sha = hashlib.sha256(hub.repos["org/tiny-hf"].files["model.safetensors"]).hexdigest()
    assert digests["pulling model.safetensors"] == f"sha256:{model_sha}"
    assert not any("README" in r.path or ".bin" in r.path for r in hub.requests)  # checkpoint files only

    tags = httpx.get(f"{server.base_url}/api/tags").json()["models"]
    assert "tiny-hf:latest" in [m["model"] for m in tags]
    spec = _stored(workdir, "tiny-hf")
    assert spec["backend"] == "paged" and spec["path"].endswith("/models/pulled/org/tiny-hf")
    generated = httpx.post(f"{server.base_url}/api/generate", timeout=120,
                           json={"model": "tiny-hf", "prompt": "hello", "stream": False,
                                 "options": {"num_predict": 3}})  # fmt: skip
    if generated.status_code == 503:  # a build or machine where the paged engine cannot run
        assert "error" in generated.json()
    else:
        assert generated.status_code == 200 and generated.json()["eval_count"] == 3, generated.text

    # under another name: the files are there at this commit already, so nothing is transferred again
    before = len(hub.requests)
    response = _pull(server, model="hf://org/tiny-hf", name="my-checkpoint")
    assert response.status_code == 200 and response.json() == {"status": "success", "model": "my-checkpoint"}
    assert [r.path for r in hub.requests[before:]] == ["/api/models/org/tiny-hf"]
    assert _stored(workdir, "my-checkpoint")["backend"] == "paged"


def test_a_tag_picks_one_of_several_ggufs(pull_server):
    server, _ = pull_server
    response = _pull(server, model="hf.co/org/two-ggufs:Q8_0")
    assert response.status_code == 200 and response.json()["model"] == "two-ggufs-q8_0"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "hf://org/missing"}, 404, "repository org/missing not found"),
        ({"model": "hf://org/tiny-gguf:other.gguf"}, 404, "file other.gguf not found"),
        ({"model": "hf.co/org/two-ggufs:Q2_K"}, 404, "no .gguf files in org/two-ggufs match"),
        ({"model": "llama3"}, 400, "tandem pulls from Hugging Face"),
        ({"model": "hf://org/two-ggufs"}, 400, "several GGUF models"),
        ({"model": "hf://org/tiny-gguf", "name": "tiny"}, 400, "defined in the config file"),
        ({"model": "hf://org/tiny-gguf", "name": "bad name!"}, 400, "invalid model name"),
        ({"model": "hf://org/broken"}, 502, "the Hub answered 500"),
        ({"model": "hf://org/stalled"}, 502, "cannot reach the Hugging Face Hub"),
    ],
)
def test_pull_errors_use_ollamas_envelope(pull_server, body, status, message):
    server, _ = pull_server
    started = time.monotonic()
    for stream in (False, True):  # known before the first byte: a status code either way
        response = _pull(server, **body, stream=stream)
        assert response.status_code == status, response.text
        assert list(response.json()) == ["error"] and message in response.json()["error"]
    assert time.monotonic() - started < 15  # the stalled Hub times out instead of hanging


def test_a_dropped_transfer_resumes_with_a_range_request(pull_server, hub):
    server, workdir = pull_server
    hub.drop_once("org/big-gguf", "big.gguf", after_bytes=12 * 2**20)
    response = _pull(server, model="hf://org/big-gguf")
    assert response.status_code == 200, response.text
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith("/big.gguf")]
    assert [(r.range, r.status) for r in gets] == [(None, 200), ("bytes=10485760-", 206)]
    pulled = workdir / "home" / "models" / "pulled" / "org" / "big-gguf" / "big.gguf"
    assert (
        hashlib.sha256(pulled.read_bytes()).digest()
        == hashlib.sha256(hub.repos["org/big-gguf"].files["big.gguf"]).digest()
    )
    assert "Trying to resume download" in server.log()


def test_a_client_that_goes_away_stops_the_download(pull_server, hub):
    server, workdir = pull_server
    body = {"model": "hf://org/slow-gguf"}
    with httpx.stream("POST", f"{server.base_url}/api/pull", json=body, timeout=30) as response:
        assert response.status_code == 200
        next(line for line in response.iter_lines() if '"completed"' in line)  # the transfer has begun
    time.sleep(3)  # longer than the whole transfer takes
    folder = workdir / "home" / "models" / "pulled" / "org" / "slow-gguf"
    assert not (folder / "big.gguf").exists() and not list(folder.rglob("*.incomplete"))
    assert "slow-gguf:latest" not in [m.model for m in ollama.Client(host=server.base_url).list().models]


def test_the_cli_says_when_no_server_runs():
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "pull", "hf://org/x", "--url", url],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1 and "is `tandem serve` running?" in result.stderr
