"""Embeddings through both protocols, on the llama.cpp backend's embedding mode."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import ollama
import pytest

TEXTS = ["The quick brown fox", "jumps over the lazy dog", "🚲 tandem"]


# embeddings are the llama.cpp backend's (dev profile); test_api checks the paged backend refuses them
pytestmark = pytest.mark.parametrize("server", ["dev"], indirect=True)


@pytest.fixture
def dev_server(server):
    return server


def test_openai_embeddings(dev_server):
    client = dev_server.openai()
    result = client.embeddings.create(model="tiny", input=TEXTS)
    assert [d.index for d in result.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (3, 64)  # the tiny model's hidden size
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    assert result.usage.prompt_tokens == result.usage.total_tokens > 3
    again = client.embeddings.create(model="tiny", input=TEXTS[0]).data[0].embedding
    assert np.allclose(again, vectors[0], atol=1e-5)  # batched or alone, the same vector


def test_token_arrays_dimensions_and_base64(dev_server):
    client = dev_server.openai()
    ids = client.embeddings.create(model="tiny", input=[[5, 6, 7], [8, 9]])
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 5
    short = client.embeddings.create(model="tiny", input="hello", dimensions=16).data[0].embedding
    assert len(short) == 16 and abs(np.linalg.norm(short) - 1) < 1e-5
    as_base64 = {"model": "tiny", "input": "hello", "encoding_format": "base64"}
    raw = httpx.post(f"{dev_server.v1}/embeddings", json=as_base64).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    plain = client.embeddings.create(model="tiny", input="hello").data[0].embedding
    assert np.allclose(decoded, plain, atol=1e-6)


def test_embedding_errors(dev_server):
    for body, param in [({"model": "tiny", "input": ""}, "input"), ({"model": "tiny", "input": []}, "input"),
                        ({"model": "tiny", "input": [[99999999]]}, "input")]:  # fmt: skip
        response = httpx.post(f"{dev_server.v1}/embeddings", json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == param
    too_long = {"model": "tiny", "input": "word " * 5000}
    response = httpx.post(f"{dev_server.v1}/embeddings", json=too_long)
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_ollama_embed_and_legacy(dev_server):
    client = ollama.Client(host=dev_server.base_url)
    result = client.embed(model="tiny", input=TEXTS)
    assert len(result.embeddings) == 3 and len(result.embeddings[0]) == 64
    assert result.prompt_eval_count > 3 and result.total_duration > 0
    openai_vector = dev_server.openai().embeddings.create(model="tiny", input=TEXTS[0]).data[0].embedding
    assert np.allclose(result.embeddings[0], openai_vector, atol=1e-5)
    truncated = client.embed(model="tiny", input="word " * 5000)  # truncate defaults to true
    assert len(truncated.embeddings) == 1
    with pytest.raises(ollama.ResponseError):
        client.embed(model="tiny", input="word " * 5000, truncate=False)
    legacy = client.embeddings(model="tiny", prompt=TEXTS[0])
    assert np.allclose(legacy.embedding, openai_vector, atol=1e-5)


def test_an_over_long_text_is_cut_or_refused_before_tokenizing(dev_server):
    """A text no context can hold (more than 32 bytes a token) is refused on /v1 and cut on Ollama's
    /api/embed (truncate defaults to true), without tokenizing megabytes on the server."""
    huge = "word " * 200_000  # 1 MB: over what the 2048-token context can hold at any tokenization
    refused = httpx.post(f"{dev_server.v1}/embeddings", json={"model": "tiny", "input": huge}, timeout=60)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    cut = httpx.post(f"{dev_server.base_url}/api/embed", json={"model": "tiny", "input": huge}, timeout=60)
    assert cut.status_code == 200, cut.text
    assert len(cut.json()["embeddings"]) == 1
    strict = {"model": "tiny", "input": huge, "truncate": False}
    assert httpx.post(f"{dev_server.base_url}/api/embed", json=strict, timeout=60).status_code == 400
