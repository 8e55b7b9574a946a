"""A generation's output as Anthropic's content blocks and stop reasons: thinking blocks on a thinking
template, and, in-process on a scripted backend, what a random model cannot be made to write (stop
sequences, a model's own tool calls, the context's end, a prefill, a full queue, a failure mid-stream)."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest
from fastapi.testclient import TestClient

from backends.base import FinishReason, GenerationChunk, GenerationRequest, QueueFullError
from backends.text_stream import TextAssembler
from tests.anthropic_support import (
    ASK,
    GREEDY,
    TOOLS,
    create,
    envelope,
    sdk_client,
    sse_events,
)
from tests.conftest import model_entry, start_server
from tests.test_error_contract import EVERYTHING, ScriptedBackend, _ScriptedStream, serving

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
        client = sdk_client(running.base_url)
        thinking = {"type": "adaptive"}  # "enabled" would need a budget of 1024 tokens, below max_tokens
        message = create(client, max_tokens=12, thinking=thinking)
        assert [block.type for block in message.content] == ["thinking"] and message.content[0].thinking
        with client.messages.stream(model="tiny", max_tokens=12, messages=ASK, thinking=thinking,
                                    **GREEDY) as stream:  # fmt: skip
            kinds = {event.delta.type for event in stream if event.type == "content_block_delta"}
            final = stream.get_final_message()
        assert "thinking_delta" in kinds and final.content[0].thinking == message.content[0].thinking
        plain = create(client, thinking={"type": "disabled"})
        assert [block.type for block in plain.content] == ["text"]
        history = [*ASK, {"role": "assistant", "content": [block.model_dump() for block in message.content]},
                   {"role": "user", "content": "And in Oslo?"}]  # fmt: skip
        assert create(client, messages=history, max_tokens=1).usage.input_tokens > 0
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
        envelope(response, 529, "overloaded_error")
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
        events = sse_events(response)
    error = {"type": "invalid_request_error", "message": "the grammar matcher refused token 7"}
    assert events[-1] == ("error", {"type": "error", "error": error})
    assert ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": "Hel"}}) in events  # fmt: skip


def test_metadata_user_id_reaches_a_remote_upstream_as_openais_user():
    from gateway.anthropic_conversation import anthropic_conversation
    from gateway.anthropic_protocol import MessagesRequest
    from gateway.anthropic_remote import chat_payload

    body = MessagesRequest.model_validate(
        {"model": "m", "max_tokens": 4, "messages": ASK, "metadata": {"user_id": "u-42"}}
    )
    assert chat_payload(body, anthropic_conversation(body))["user"] == "u-42"
    plain = MessagesRequest.model_validate({"model": "m", "max_tokens": 4, "messages": ASK})
    assert "user" not in chat_payload(plain, anthropic_conversation(plain))
