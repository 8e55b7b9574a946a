"""Every number in a request is bounded at the protocol edge: out of range, NaN or infinite is a 400 in the
protocol's envelope naming the field, on both profiles, and the model serves on afterwards.

The regression: `seed: 2**64 - 1` with `n: 2` (choice 1 samples with seed + 1) killed the paged engine's
thread, and every later request to the model hung while /health said 200; on dev `seed: -1` was a 503
that put the deployment in cooldown.
"""

from __future__ import annotations

import json

import httpx
import pytest

INT64_MAX = 2**63 - 1
CHAT = [{"role": "user", "content": "hi"}]


def _post(server, path: str, body: dict) -> httpx.Response:
    # json.dumps writes NaN and Infinity as bare words, as a careless client's JSON library may
    return httpx.post(
        f"{server.base_url}{path}", content=json.dumps(body), headers={"content-type": "application/json"},
        timeout=60,
    )  # fmt: skip


def _chat(server, **fields) -> httpx.Response:
    return _post(
        server, "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 3, **fields}
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"seed": 2**63}, "seed"),
        ({"seed": 2**64 - 1, "n": 2}, "seed"),
        ({"seed": INT64_MAX, "n": 2}, "seed"),  # choice 1 would sample with 2^63
        ({"seed": -(2**63) - 1}, "seed"),
        ({"max_tokens": 2**40}, "max_tokens"),
        ({"max_completion_tokens": 2**63}, "max_completion_tokens"),
        ({"top_k": 2**63}, "top_k"),
        ({"min_tokens": 10**30}, "min_tokens"),
        ({"n": 129}, "n"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"presence_penalty": float("-inf")}, "presence_penalty"),
        ({"logit_bias": {"5": float("inf")}}, "logit_bias.5"),
    ],
)
def test_out_of_range_numbers_are_400(server, fields, param):
    response = _chat(server, **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_completions_bounds(server):
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 3}
    response = _post(server, "/v1/completions", {**body, "seed": 2**64 - 1, "n": 2})
    assert response.status_code == 400 and response.json()["error"]["param"] == "seed"
    response = _post(server, "/v1/completions", {**body, "best_of": 10**6})
    assert response.status_code == 400 and response.json()["error"]["param"] == "best_of"


def test_every_int64_seed_samples(server):
    """vLLM and OpenAI accept any int64; the backends map it onto their generator's 64 bits."""
    for seed, n in ((-1, 1), (-(2**63), 2), (INT64_MAX, 1), (INT64_MAX - 1, 2), (0, 1)):
        response = _chat(server, seed=seed, n=n, temperature=1.0)
        assert response.status_code == 200, (seed, response.text)
        assert len(response.json()["choices"]) == n
    same = [_chat(server, seed=-7, temperature=1.0, max_tokens=6).json() for _ in range(2)]
    assert same[0]["choices"][0]["message"] == same[1]["choices"][0]["message"]


@pytest.mark.parametrize(
    "options",
    [
        {"seed": 2**64},
        {"seed": -(2**63) - 1},
        {"num_ctx": 2**40},
        {"num_predict": 2**40},
        {"top_k": 2**63},
        {"temperature": float("nan")},
        {"repeat_penalty": float("inf")},
    ],
)
def test_ollama_options_out_of_range_are_400(server, options):
    response = _post(
        server, "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False, "options": options}
    )
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert isinstance(message, str) and next(iter(options)) in message


def test_ollama_negative_seed_and_token_context(server):
    body = {"model": "tiny", "prompt": "hi", "stream": False, "options": {"seed": -1, "num_predict": 3}}
    response = _post(server, "/api/generate", body)
    assert response.status_code == 200, response.text
    response = _post(server, "/api/generate", {**body, "context": [2**70]})
    assert response.status_code == 400, response.text


def test_the_model_serves_on_and_is_healthy(server):
    """Runs after the cases above (file order): nothing they sent broke the engine."""
    response = _chat(server, seed=2**62, n=2, temperature=1.0)
    assert response.status_code == 200, response.text
    health = httpx.get(f"{server.base_url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
