"""End to end: a real `tandem serve` driven by the official openai client (and raw HTTP for bad input)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

CHAT = [{"role": "user", "content": "Tell me about tandem bicycles."}]


def test_models_list_and_get(server):
    client = server.openai()
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    card = client.models.retrieve("default")  # aliases resolve too
    assert card.id == "tiny"
    response = httpx.get(f"{server.v1}/models")
    assert response.json()["data"][0]["aliases"] == ["default"]
    assert response.headers["x-request-id"]


def test_health(server):
    response = httpx.get(f"{server.base_url}/health")
    assert response.status_code == 200
    assert response.json()["models"] == ["tiny"]


def test_chat_completion(server):
    raw = server.openai().chat.completions.with_raw_response.create(
        model="tiny", messages=CHAT, max_tokens=12, temperature=0
    )
    completion = raw.parse()
    assert raw.headers["x-tandem-backend"] in ("llamacpp", "paged")
    assert raw.headers["x-request-id"]
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.model == "tiny"


def test_request_id_is_echoed(server):
    response = httpx.get(f"{server.v1}/models", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


def test_max_tokens_gives_length(server):
    client = server.openai()
    chat = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=5, temperature=0, extra_body={"ignore_eos": True}
    )
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage.completion_tokens == 5
    completion = client.completions.create(model="tiny", prompt="Once upon", max_tokens=7, temperature=0)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 7
    newer = client.chat.completions.create(
        model="tiny", messages=CHAT, max_completion_tokens=3, temperature=0
    )
    assert newer.usage.completion_tokens == 3


def test_streaming_chat_matches_non_streaming(server):
    client = server.openai()
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=16, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=CHAT,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")  # what the cache held may differ
    assert chunks[-1].usage.model_dump(include=set(counts)) == whole.usage.model_dump(include=set(counts))
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed


def test_streaming_completion_without_usage(server):
    stream = server.openai().completions.create(
        model="default", prompt="Hello", max_tokens=6, temperature=0, stream=True
    )
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_strings(server):
    client = server.openai()
    base = client.completions.create(
        model="tiny", prompt="The", max_tokens=40, temperature=0, extra_body={"ignore_eos": True}
    )
    text = base.choices[0].text
    assert len(text) > 6
    stop = text[3:6]  # a string the model is known to produce at offset 3 (greedy is deterministic)
    for stream in (False, True):
        result = client.completions.create(
            model="tiny",
            prompt="The",
            max_tokens=40,
            temperature=0,
            stop=[stop, "never-produced"],
            stream=stream,
        )
        if stream:
            pieces = list(result)
            got = "".join(c.choices[0].text for c in pieces if c.choices)
            finishes = [c.choices[0].finish_reason for c in pieces if c.choices]
            reason = next(f for f in finishes if f)
        else:
            got, reason = result.choices[0].text, result.choices[0].finish_reason
        assert got == text[: text.index(stop)]
        assert reason == "stop"


def test_seed_reproducibility(server):
    client = server.openai()

    def sample(seed: int) -> str:
        out = client.chat.completions.create(
            model="tiny",
            messages=CHAT,
            max_tokens=24,
            temperature=1.0,
            seed=seed,
            extra_body={"ignore_eos": True},
        )
        return out.choices[0].message.content

    first, again, other = sample(1234), sample(1234), sample(999)
    assert first == again
    assert first != other


def test_sampling_parameters_are_accepted(server):
    out = server.openai().chat.completions.create(
        model="tiny",
        messages=CHAT,
        max_tokens=8,
        temperature=0.8,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        user="someone",
        seed=7,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert out.usage.completion_tokens > 0


def test_n_choices_and_logprobs(server):
    out = server.openai().chat.completions.create(
        model="tiny",
        messages=CHAT,
        max_tokens=4,
        n=3,
        seed=5,
        logprobs=True,
        top_logprobs=2,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert out.usage.completion_tokens == 12
    for choice in out.choices:
        assert len(choice.logprobs.content) == 4
        for item in choice.logprobs.content:
            assert item.logprob <= 0
            assert len(item.top_logprobs) == 2
            assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob


def test_completion_prompt_forms(server):
    client = server.openai()
    batch = client.completions.create(model="tiny", prompt=["Hi", "Bye"], max_tokens=3, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    ids = client.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=3, temperature=0)
    assert ids.usage.prompt_tokens == 3


# ---- errors: always the OpenAI envelope, never a 500 -------------------------------------------------------


def _post(server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.v1}/{path}", timeout=30, **kwargs)


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_malformed_json(server):
    error = _error(
        _post(server, "chat/completions", content=b"{not json", headers={"content-type": "application/json"}),
        400,
    )
    assert "JSON" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "tiny", "messages": CHAT, "temperature": "hot"}, "temperature"),
        ({"model": "tiny", "messages": CHAT, "max_tokens": 0}, "max_tokens"),
        ({"model": "tiny", "messages": CHAT, "top_p": 1.5}, "top_p"),
        ({"model": "tiny", "messages": "hello"}, "messages"),
        ({"model": "tiny"}, "messages"),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "tiny", "messages": CHAT, "surprise": 1}, "surprise"),
        ({"model": "tiny", "messages": CHAT, "tools": [{"type": "function"}]}, "tools[0].function"),
        ({"model": "tiny", "messages": CHAT, "logit_bias": {"99999999": 1}}, "logit_bias"),
    ],
)
def test_wrong_fields_name_the_param(server, body, param):
    assert _error(_post(server, "chat/completions", json=body), 400)["param"] == param


def test_wrong_field_through_openai_client(server):
    with pytest.raises(openai.BadRequestError) as caught:
        server.openai().chat.completions.create(model="tiny", messages=CHAT, temperature=5)
    assert caught.value.body["param"] == "temperature"


def test_unknown_model(server):
    with pytest.raises(openai.NotFoundError) as caught:
        server.openai().chat.completions.create(model="no-such-model", messages=CHAT)
    assert caught.value.body["code"] == "model_not_found"
    error = _error(httpx.get(f"{server.v1}/models/no-such-model"), 404)
    assert error["code"] == "model_not_found"


def test_context_length_exceeded(server):
    context = httpx.get(f"{server.v1}/models/tiny").json()["context_length"]
    with pytest.raises(openai.BadRequestError) as caught:
        server.openai().chat.completions.create(model="tiny", messages=CHAT, max_tokens=context)
    assert caught.value.body["code"] == "context_length_exceeded"
    long_prompt = "word " * (context + 10)
    error = _error(_post(server, "completions", json={"model": "tiny", "prompt": long_prompt}), 400)
    assert error["code"] == "context_length_exceeded"


def test_body_too_large(server):
    huge = b'{"model": "tiny", "prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    error = _error(
        _post(server, "completions", content=huge, headers={"content-type": "application/json"}), 413
    )
    assert "too large" in error["message"]


def test_unknown_route_and_method(server):
    _error(httpx.get(f"{server.v1}/nothing-here"), 404)
    _error(httpx.get(f"{server.v1}/chat/completions"), 405)


def test_embeddings_only_where_the_backend_has_them(server):
    response = _post(server, "embeddings", json={"model": "tiny", "input": "hi"})
    if response.headers["x-tandem-backend"] == "paged":
        assert "does not support embeddings" in _error(response, 400)["message"]
    else:
        assert response.status_code == 200


def test_non_object_body(server):
    _error(_post(server, "completions", json=[1, 2, 3]), 400)
    _error(_post(server, "completions", json={"model": "tiny", "prompt": [-1]}), 400)
    _error(_post(server, "completions", json={"model": "tiny", "prompt": []}), 400)


def test_response_format_json_object_and_schema(server):
    client = server.openai()
    # the random-weight model often rambles inside a string until max_tokens; every answer that ends by
    # itself must be a complete JSON object, and some do end
    finished = []
    for seed in range(8):
        answer = client.chat.completions.create(
            model="tiny", messages=CHAT, max_tokens=300, seed=seed, response_format={"type": "json_object"}
        )
        if answer.choices[0].finish_reason == "stop":
            finished.append(json.loads(answer.choices[0].message.content))
    assert finished and all(isinstance(document, dict) for document in finished)
    schema = {
        "type": "object",
        "required": ["city", "rank"],
        "properties": {
            "city": {"type": "string", "maxLength": 10},
            "rank": {"type": "integer", "minimum": 1, "maximum": 9},
        },
    }
    strict = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=400, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )  # fmt: skip
    assert strict.choices[0].finish_reason == "stop"  # a bounded schema always completes
    jsonschema.validate(json.loads(strict.choices[0].message.content), schema)
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": 5}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=CHAT, response_format=bad)
    assert caught.value.body["param"] == "response_format"
