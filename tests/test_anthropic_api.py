"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) through the official anthropic SDK and
litellm's anthropic/ provider, on both profiles; access control, limits and the error envelope on a server
with keys; and what a random model cannot be made to write (stop sequences, a model's own tool calls, the
end of the context) in-process on a scripted backend.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import anthropic
import httpx
import jsonschema
import pytest
from fastapi.testclient import TestClient

from backends.base import FinishReason, GenerationChunk, GenerationRequest, QueueFullError
from backends.text_stream import TextAssembler
from tests.conftest import model_entry, start_server
from tests.test_error_contract import EVERYTHING, ScriptedBackend, _ScriptedStream, serving

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
    "required": ["city"],
}
TIME = {"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
TOOLS = [{"name": name, "description": f"{name} tool", "input_schema": s} for name, s in SCHEMAS.items()]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
ROOM = 200  # enough for a forced call's JSON on the random model
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


def _client(base_url: str, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=base_url, max_retries=0, timeout=60, **{"api_key": "unused", **kwargs}
    )


@pytest.fixture
def client(server) -> anthropic.Anthropic:
    return _client(server.base_url)


# the SDK has no sampling arguments any more (Anthropic's newest models take none); the API still does
GREEDY = {"extra_body": {"temperature": 0}}


def _create(client: anthropic.Anthropic, **kwargs):
    return client.messages.create(**{"model": "tiny", "max_tokens": 8, "messages": ASK, **GREEDY, **kwargs})


def _post(url: str, **kwargs) -> httpx.Response:
    return httpx.post(url, timeout=60, **kwargs)  # the first tool schema imports xgrammar: seconds


def _envelope(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    return body["error"]["message"]


# ---- the SDK on both profiles ------------------------------------------------------------------------------


def test_create_answers_a_message(client):
    message = _create(client, system="Answer briefly.", metadata={"user_id": "u-1"})
    assert message.type == "message" and message.role == "assistant" and message.model == "tiny"
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"] and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    assert 0 < message.usage.output_tokens <= 8 and message.usage.input_tokens > 0
    as_blocks = _create(client, system=[{"type": "text", "text": "Answer briefly."}])
    assert as_blocks.usage.input_tokens == message.usage.input_tokens
    assert _create(client).usage.input_tokens < message.usage.input_tokens  # the system prompt counts


def test_a_stop_sequence_stops_the_real_model_and_is_named(client):
    free = _create(client, max_tokens=24).content[0].text
    assert len(free) >= 8, free
    stop = free[len(free) // 2 : len(free) // 2 + 3]  # greedy: the same text comes again, up to the stop
    before = free[: free.index(stop)]
    assert before, free
    message = _create(client, max_tokens=24, stop_sequences=["\u2603never", stop])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", stop)
    assert [block.text for block in message.content] == [before]
    with client.messages.stream(
        **{"model": "tiny", "max_tokens": 24, "messages": ASK, **GREEDY, "stop_sequences": [stop]}
    ) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)
    assert [block.text for block in final.content] == [before]


def test_stream_helper_yields_the_final_message(client):
    unary = _create(client, max_tokens=12)
    with client.messages.stream(model="tiny", max_tokens=12, messages=ASK, **GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == unary.content[0].text
    assert final.stop_reason == unary.stop_reason
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        unary.usage.input_tokens,
        unary.usage.output_tokens,
    )


def test_tool_choice_tool_is_a_valid_call_and_round_trips(client):
    forced = _create(
        client, tools=TOOLS, tool_choice={"type": "tool", "name": "get_weather"}, max_tokens=ROOM
    )
    assert forced.stop_reason == "tool_use"
    (call,) = [block for block in forced.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.id
    jsonschema.validate(call.input, WEATHER)
    history = [*ASK, {"role": "assistant", "content": [block.model_dump() for block in forced.content]}]

    def answer(result: str, is_error: bool = False):
        block = {"type": "tool_result", "tool_use_id": call.id, "content": result, "is_error": is_error}
        return _create(client, tools=TOOLS, messages=[*history, {"role": "user", "content": [block]}])

    short, longer = answer("21"), answer("21 degrees, sunny, a light wind")
    assert longer.usage.input_tokens > short.usage.input_tokens > forced.usage.input_tokens
    assert answer("21", is_error=True).usage.input_tokens > short.usage.input_tokens
    unknown = {"type": "tool_result", "tool_use_id": "toolu_nope", "content": "21"}
    with pytest.raises(anthropic.BadRequestError, match="answers no tool_use block"):
        _create(client, tools=TOOLS, messages=[*history, {"role": "user", "content": [unknown]}])


def test_tool_choice_any_calls_one_of_the_tools_and_streams_it(client):
    kwargs = {
        "tools": TOOLS,
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "max_tokens": ROOM,
    }
    unary = _create(client, **kwargs)
    (call,) = [block for block in unary.content if block.type == "tool_use"]
    jsonschema.validate(call.input, SCHEMAS[call.name])
    with client.messages.stream(model="tiny", messages=ASK, **GREEDY, **kwargs) as stream:
        final = stream.get_final_message()
    (streamed,) = [block for block in final.content if block.type == "tool_use"]
    assert (streamed.name, streamed.input) == (call.name, call.input) and final.stop_reason == "tool_use"


def test_count_tokens_is_the_input_tokens_of_the_same_request(client):
    prompt = {"system": [{"type": "text", "text": "You are terse."}], "tools": TOOLS, "messages": ASK}
    counted = client.messages.count_tokens(model="tiny", **prompt)
    assert counted.input_tokens == _create(client, **prompt, max_tokens=1).usage.input_tokens
    assert client.messages.count_tokens(model="tiny", messages=ASK).input_tokens < counted.input_tokens


def test_thinking_on_a_model_that_cannot_think_is_refused(client):
    with pytest.raises(anthropic.BadRequestError, match="does not support thinking"):
        _create(client, max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024})
    assert _create(client, thinking={"type": "disabled"}).content


@pytest.mark.parametrize(
    ("body", "status", "kind", "needle"),
    [
        ({"messages": ASK}, 400, "invalid_request_error", "max_tokens"),
        ({"max_tokens": 4, "messages": [{"role": "system", "content": "hi"}]}, 400, "invalid_request_error",
         "role"),
        ({"max_tokens": 4, "messages": []}, 400, "invalid_request_error", "messages"),
        ({"max_tokens": 4, "messages": ASK, "temperature": 1.5}, 400, "invalid_request_error", "temperature"),
        ({"max_tokens": 4, "messages": ASK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
         400, "invalid_request_error", "web_search_20250305"),
        ({"max_tokens": 4, "messages": ASK, "tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}},
         400, "invalid_request_error", "nope"),
        ({"max_tokens": 4, "messages": ASK, "tool_choice": {"type": "any"}}, 400, "invalid_request_error",
         "at least one tool"),
        ({"max_tokens": 4, "messages": ASK, "output_config": {"effort": "low"}}, 400, "invalid_request_error",
         "output_config"),
        ({"max_tokens": 4, "model": "nope", "messages": ASK}, 404, "not_found_error", "nope"),
        ({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image", "source": PNG}]}]},
         400, "invalid_request_error", "does not accept images"),
        ({"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
         400, "invalid_request_error", "document"),
    ],
)  # fmt: skip
def test_bad_input_is_an_anthropic_error(server, body, status, kind, needle):
    for stream in (False, True):
        response = _post(f"{server.v1}/messages", json={"model": "tiny", "stream": stream, **body})
        assert needle in _envelope(response, status, kind)


def test_errors_outside_the_body_use_the_envelope_too(server):
    _envelope(_post(f"{server.v1}/messages", content=b"{not json"), 400, "invalid_request_error")
    _envelope(httpx.get(f"{server.v1}/messages"), 405, "invalid_request_error")
    counted = _post(f"{server.v1}/messages/count_tokens", json={"model": "tiny", "max_tokens": 3,
                                                                     "messages": ASK})  # fmt: skip
    assert "max_tokens" in _envelope(counted, 400, "invalid_request_error")
    with pytest.raises(anthropic.NotFoundError):
        _client(server.base_url).messages.create(model="nope", max_tokens=1, messages=ASK)


def _sse(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            assert data["type"] == name
            events.append((name, data))
    return events


CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
    "fine-grained-tool-streaming-2025-05-14",
    "x-api-key": "unused",
    "user-agent": "claude-cli/2.0.0 (external, cli)",
    "x-app": "cli",
}


def _claude_code_body(max_tokens: int) -> dict:
    cached = {"type": "ephemeral"}
    return {
        "model": "tiny",
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 1,
        "metadata": {"user_id": "user_abc_account__session_123"},
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": cached},
            {"type": "text", "text": "You are an interactive CLI tool that helps users with software tasks."},
        ],
        "tools": [
            {"name": "Bash", "description": "Runs a bash command",
             "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                              "required": ["command"], "additionalProperties": False,
                              "$schema": "http://json-schema.org/draft-07/schema#"}},
            {"name": "Read", "description": "Reads a file", "cache_control": cached,
             "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                              "required": ["file_path"]}},
        ],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>Be careful.</system-reminder>"},
            {"type": "text", "text": "list the files", "cache_control": cached},
        ]}],
    }  # fmt: skip


def test_a_claude_code_style_stream(server):
    body = _claude_code_body(24)
    with httpx.stream("POST", f"{server.v1}/messages", json=body, headers=CLAUDE_CODE_HEADERS,
                      timeout=60) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse(response)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    started = [data["index"] for name, data in events if name == "content_block_start"]
    stopped = [data["index"] for name, data in events if name == "content_block_stop"]
    assert started == stopped == list(range(len(started)))
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
    assert 0 < delta["usage"]["output_tokens"] <= 24
    assert events[0][1]["message"]["usage"]["input_tokens"] == delta["usage"]["input_tokens"] > 0


def test_litellm_anthropic_provider(server):
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    response = litellm.completion(model="anthropic/tiny", api_base=server.base_url, api_key="unused",
                                  messages=ASK, max_tokens=6, temperature=0)  # fmt: skip
    assert response.choices[0].message.content
    assert response.usage.completion_tokens <= 6 and response.usage.prompt_tokens > 0
    streamed = litellm.completion(model="anthropic/tiny", api_base=server.base_url, api_key="unused",
                                  messages=ASK, max_tokens=6, temperature=0, stream=True)  # fmt: skip
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed)
    assert text == response.choices[0].message.content


# ---- keys, limits, the envelope of refusals ----------------------------------------------------------------

MASTER = "sk-anthropic-master"


@pytest.fixture(scope="module")
def keyed_server(tiny_llama, tmp_path_factory):
    entry = model_entry(tiny_llama, "dev", preload=True)
    config = {"profile": "dev", "profiles": {"dev": {"models": [entry]}}}
    env = {"TANDEM_MASTER_KEY": MASTER, "TANDEM_MAX_REQUEST_BYTES": str(64 * 1024)}
    running = start_server(config, tmp_path_factory.mktemp("anthropic-keys"), env=env)
    yield running
    running.stop()


def _key(server, **fields) -> str:
    response = _post(f"{server.base_url}/admin/keys", json={"name": "k", **fields},
                          headers={"authorization": f"Bearer {MASTER}"})  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()["key"]


def test_keys_are_taken_as_x_api_key_or_bearer(keyed_server):
    key = _key(keyed_server)
    by_header = _client(keyed_server.base_url, api_key=key).messages.create(
        model="tiny", max_tokens=2, messages=ASK
    )
    assert by_header.usage.output_tokens > 0
    bearer = anthropic.Anthropic(base_url=keyed_server.base_url, auth_token=key, api_key=None, max_retries=0)
    assert (
        bearer.messages.count_tokens(model="tiny", messages=ASK).input_tokens == by_header.usage.input_tokens
    )
    with pytest.raises(anthropic.AuthenticationError) as refused:
        _client(keyed_server.base_url, api_key="sk-tandem-000000000000-wrong").messages.create(
            model="tiny", max_tokens=2, messages=ASK
        )
    assert refused.value.status_code == 401
    message = refused.value.body["error"]["message"]
    assert refused.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": message},
    }
    missing = _post(f"{keyed_server.v1}/messages", json={"model": "tiny", "max_tokens": 2, "messages": ASK})
    assert "x-api-key" in _envelope(missing, 401, "authentication_error")


def test_usage_and_metrics_count_messages(keyed_server):
    client = _client(keyed_server.base_url, api_key=_key(keyed_server, team="anthropic-usage"))
    unary = client.messages.create(model="tiny", max_tokens=3, messages=ASK)
    with client.messages.stream(model="tiny", max_tokens=4, messages=ASK) as stream:
        streamed = stream.get_final_message()
    master = {"authorization": f"Bearer {MASTER}"}
    expected = {"model": "tiny", "requests": 2, "prompt_tokens": 2 * unary.usage.input_tokens,
                "completion_tokens": unary.usage.output_tokens + streamed.usage.output_tokens}  # fmt: skip
    deadline = time.monotonic() + 10  # a stream's usage is settled as it ends, just after its last event
    while True:
        rows = httpx.get(f"{keyed_server.base_url}/admin/usage", params={"team": "anthropic-usage"},
                         headers=master).json()["data"]  # fmt: skip
        got = [{name: row[name] for name in expected} for row in rows]
        if got == [expected] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == [expected]
    metrics = httpx.get(f"{keyed_server.base_url}/metrics", headers=master).text
    assert 'tandem_requests_total{backend="llamacpp",deployment="tiny",model="tiny",route="/v1/messages",' \
           'status_code="200",team="anthropic-usage"} 2.0' in metrics  # fmt: skip


def test_a_keys_models_and_limits_hold(keyed_server):
    other = _client(keyed_server.base_url, api_key=_key(keyed_server, models=["other-*"]))
    with pytest.raises(anthropic.NotFoundError):
        other.messages.create(model="tiny", max_tokens=2, messages=ASK)
    limited = _key(keyed_server, rpm=1)
    headers = {"x-api-key": limited}
    body = {"model": "tiny", "max_tokens": 2, "messages": ASK}
    first = _post(f"{keyed_server.v1}/messages", json=body, headers=headers)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "1"
    refused = _post(f"{keyed_server.v1}/messages", json={**body, "stream": True}, headers=headers)
    _envelope(refused, 429, "rate_limit_error")
    assert "retry-after" in refused.headers
    too_large = _post(f"{keyed_server.v1}/messages", headers={"x-api-key": _key(keyed_server)},
                           json={**body, "system": "x" * 70_000})  # fmt: skip
    _envelope(too_large, 413, "request_too_large")


# ---- a remote upstream -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def routed(keyed_server, tmp_path_factory):
    """A gateway whose models are the keyed server's `tiny`, reached as an OpenAI upstream (direct and
    through litellm)."""
    remote = {"api_base": keyed_server.v1, "model": "tiny", "api_key_env": "UPSTREAM_KEY"}
    models = [
        {"name": "up", "backend": "remote", "remote": remote},
        {"name": "up-litellm", "backend": "remote", "remote": {**remote, "client": "litellm"}},
    ]
    config = {"profile": "dev", "profiles": {"dev": {"models": models}}}
    running = start_server(config, tmp_path_factory.mktemp("anthropic-routed"), env={"UPSTREAM_KEY": MASTER})
    yield running
    running.stop()


@pytest.mark.parametrize("name", ["up", "up-litellm"])
def test_a_remote_model_answers_through_its_chat_api(routed, keyed_server, name):
    local = _client(keyed_server.base_url, api_key=MASTER)
    client = _client(routed.base_url)
    expected = _create(local, max_tokens=10)
    raw = client.messages.with_raw_response.create(model=name, max_tokens=10, messages=ASK, **GREEDY)
    assert raw.headers["x-tandem-backend"] == "remote"
    answer = raw.parse()
    assert answer.content[0].text == expected.content[0].text and answer.model == name
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (
        expected.usage.input_tokens,
        expected.usage.output_tokens,
    )
    with client.messages.stream(model=name, max_tokens=10, messages=ASK, **GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == expected.content[0].text
    assert (
        final.stop_reason == expected.stop_reason
        and final.usage.output_tokens == expected.usage.output_tokens
    )
    if name == "up":  # the calls are mapped here, not by the transport: once is enough
        choice = {"type": "tool", "name": "get_weather"}
        forced = client.messages.create(
            model=name, max_tokens=ROOM, messages=ASK, tools=TOOLS, tool_choice=choice
        )
        (call,) = [block for block in forced.content if block.type == "tool_use"]
        assert call.name == "get_weather" and forced.stop_reason == "tool_use"
        jsonschema.validate(call.input, WEATHER)
    with pytest.raises(anthropic.BadRequestError, match="remote upstream"):
        client.messages.count_tokens(model=name, messages=ASK)


# ---- a thinking model --------------------------------------------------------------------------------------

THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is not defined or enable_thinking %}{{ '<think>\\n' }}"
    "{% else %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
)


def test_thinking_is_a_thinking_block(tmp_path_factory, tiny_llama):
    """A template whose generation prompt opens the reasoning: the random model never closes it, so what
    it writes is all thinking."""
    entry = model_entry(tiny_llama, "dev", preload=True, chat_template=THINKING_TEMPLATE)
    running = start_server({"profile": "dev", "profiles": {"dev": {"models": [entry]}}},
                           tmp_path_factory.mktemp("anthropic-thinking"))  # fmt: skip
    try:
        client = _client(running.base_url)
        thinking = {"type": "adaptive"}  # "enabled" would need a budget of 1024 tokens, below max_tokens
        message = _create(client, max_tokens=12, thinking=thinking)
        assert [block.type for block in message.content] == ["thinking"] and message.content[0].thinking
        with client.messages.stream(model="tiny", max_tokens=12, messages=ASK, thinking=thinking,
                                    **GREEDY) as stream:  # fmt: skip
            kinds = {event.delta.type for event in stream if event.type == "content_block_delta"}
            final = stream.get_final_message()
        assert "thinking_delta" in kinds and final.content[0].thinking == message.content[0].thinking
        plain = _create(client, thinking={"type": "disabled"})
        assert [block.type for block in plain.content] == ["text"]
        history = [*ASK, {"role": "assistant", "content": [block.model_dump() for block in message.content]},
                   {"role": "user", "content": "And in Oslo?"}]  # fmt: skip
        assert _create(client, messages=history, max_tokens=1).usage.input_tokens > 0
    finally:
        running.stop()


# ---- in-process, on a scripted backend ---------------------------------------------------------------------


class _Script(ScriptedBackend):
    """Answers every request with the scripted pieces, one chunk each, the last with `finish`; stop strings
    end it the way every backend ends them (backends.text_stream.TextAssembler)."""

    def __init__(self) -> None:
        super().__init__(EVERYTHING)
        self.pieces = ["Hello"]
        self.finish = FinishReason.STOP
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> _ScriptedStream:
        self.requests.append(request)
        if self.refuse is not None:
            raise self.refuse
        assembler, chunks = TextAssembler(request.sampling.stop), []
        for piece in self.pieces:
            text = assembler.push(piece.encode())
            if assembler.stopped:
                stopped = GenerationChunk(text, [1], FinishReason.STOP, stop_sequence=assembler.matched_stop)
                chunks.append(stopped)
                break
            chunks.append(GenerationChunk(text, [1]))
        else:
            chunks[-1] = GenerationChunk(chunks[-1].text + assembler.finish(), [1], self.finish)
        return _ScriptedStream(chunks[:-1] if self.fail else chunks, self.fail)


@pytest.fixture
def scripted(tmp_path, tiny_llama) -> Iterator[tuple[_Script, TestClient]]:
    backend = _Script()
    with serving(backend, tmp_path, tiny_llama.gguf_path) as client:
        yield backend, client


def _sdk(client: TestClient) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url="http://testserver", api_key="unused", http_client=client, max_retries=0
    )


def _scripted_create(client: TestClient, **kwargs):
    return _sdk(client).messages.create(**{"model": "m", "max_tokens": 50, "messages": ASK, **kwargs})


def _scripted_stream(client: TestClient, **kwargs):
    with _sdk(client).messages.stream(
        **{"model": "m", "max_tokens": 50, "messages": ASK, **kwargs}
    ) as stream:
        return "".join(stream.text_stream), stream.get_final_message()


def test_a_stop_sequence_cuts_the_answer_and_is_named(scripted):
    backend, client = scripted
    backend.pieces = ["Hello, wo", "rld! The ", "END is near", " and more"]
    message = _scripted_create(client, stop_sequences=["END", "world"])
    assert [block.text for block in message.content] == ["Hello, "]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "world")
    assert message.usage.output_tokens == 2  # the generation stopped at the chunk that completed it
    text, final = _scripted_stream(client, stop_sequences=["END"])
    assert text == final.content[0].text == "Hello, world! The "
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")
    assert backend.requests[-1].sampling.stop == ("END",)  # the backend's stop strings, which name it
    unmatched = _scripted_create(client, stop_sequences=["Hello, wx"])
    assert unmatched.content[0].text == "".join(backend.pieces) and unmatched.stop_reason == "end_turn"


def test_a_models_own_tool_calls_become_tool_use_blocks(scripted):
    backend, client = scripted
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    backend.pieces = ["Let me check.", call[:20], call[20:45], call[45:]]
    message = _scripted_create(client, tools=TOOLS)
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[0].text == "Let me check."
    assert (message.content[1].name, message.content[1].input) == ("get_weather", {"city": "Oslo"})
    assert message.stop_reason == "tool_use"
    text, final = _scripted_stream(client, tools=TOOLS)
    assert text == "Let me check." and final.stop_reason == "tool_use"
    blocks = [(b.type, getattr(b, "input", None)) for b in final.content]
    assert blocks == [("text", None), ("tool_use", {"city": "Oslo"})]
    none = _scripted_create(client, tools=TOOLS, tool_choice={"type": "none"})
    assert [block.type for block in none.content] == ["text"] and none.stop_reason == "end_turn"


def test_max_tokens_past_the_context_ends_with_the_context(scripted):
    backend, client = scripted
    backend.finish = FinishReason.LENGTH
    _, message = _scripted_stream(client, max_tokens=32000)  # the SDK streams what may take this long
    room = 256 - message.usage.input_tokens
    assert backend.requests[-1].sampling.max_tokens == room
    assert message.stop_reason == "model_context_window_exceeded"
    assert _scripted_create(client, max_tokens=1).stop_reason == "max_tokens"


def test_a_prefill_is_continued(scripted):
    backend, client = scripted
    plain = _scripted_create(client)
    prefilled = _scripted_create(client, messages=[*ASK, {"role": "assistant", "content": "The weather"}])
    prompt = bytes(backend.requests[-1].prompt_token_ids).decode()
    assert prompt.endswith("assistant: The weather")
    assert prefilled.usage.input_tokens == plain.usage.input_tokens + len("The weather")


def test_a_full_queue_is_529_overloaded_and_a_failure_mid_stream_an_error_event(scripted):
    backend, client = scripted
    backend.refuse = QueueFullError("m", retry_after_s=3)
    body = {"model": "m", "max_tokens": 5, "messages": ASK}
    for stream in (False, True):
        response = client.post("/v1/messages", json={**body, "stream": stream})
        _envelope(response, 529, "overloaded_error")
        assert response.headers["retry-after"] == "3"
    with pytest.raises(anthropic.InternalServerError) as raised:
        _scripted_create(client)
    assert raised.value.status_code == 529
    backend.refuse = None
    backend.pieces = ["Hel", "lo"]
    from backends.base import BackendError

    backend.fail = BackendError("the grammar matcher refused token 7")
    with client.stream("POST", "/v1/messages", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        events = _sse(response)
    error = {"type": "invalid_request_error", "message": "the grammar matcher refused token 7"}
    assert events[-1] == ("error", {"type": "error", "error": error})
    assert ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": "Hel"}}) in events  # fmt: skip
