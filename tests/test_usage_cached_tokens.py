"""Usage reports the prompt tokens a prefix cache held, on both profiles and in every protocol that has a
field for it: OpenAI's prompt_tokens_details.cached_tokens (chat and completions), the Responses API's
input_tokens_details.cached_tokens, Anthropic's cache_read_input_tokens (its input_tokens then counts the
rest, as Anthropic counts). A second request with the same prompt finds the first one's in the cache
(llama.cpp: the slot's KV; paged: the hash-chained blocks), so its cached count covers most of the prompt
(never all: the last prompt token is computed, its logits start the output); the first one's can only
hold what every prompt of the chat template starts with (COLD).
"""

from __future__ import annotations

import uuid

import anthropic
import openai

from tests.anthropic_support import sdk_client

COLD = 16  # tokens a fresh prompt may share with earlier ones: the template's header
WARM = 96  # of the story's ~120 tokens, what a second request finds at least


def _story() -> str:
    """A prompt no other test sent (its cache is cold), long enough for several full KV blocks."""
    return f"Story {uuid.uuid4().hex}: " + "the quick brown fox jumps over the lazy dog " * 12


def test_chat_turn_two_reports_its_cached_prompt_tokens(server):
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": _story()}]
    first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens < COLD
    again = client.chat.completions.create(model="tiny", messages=messages, max_tokens=2, temperature=0)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert WARM <= cached < again.usage.prompt_tokens == first.usage.prompt_tokens
    stream = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=2, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    assert usage.prompt_tokens_details.cached_tokens >= WARM


def test_completions_report_cached_prompt_tokens(server):
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=60)
    prompt = _story()
    client.completions.create(model="tiny", prompt=prompt, max_tokens=2, temperature=0)
    again = client.completions.create(model="tiny", prompt=prompt, max_tokens=2, temperature=0)
    assert WARM <= again.usage.prompt_tokens_details.cached_tokens < again.usage.prompt_tokens


def test_responses_report_cached_input_tokens(server):
    client = openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=60)
    story = _story()
    first = client.responses.create(model="tiny", input=story, max_output_tokens=2, store=False)
    assert first.usage.input_tokens_details.cached_tokens < COLD
    again = client.responses.create(model="tiny", input=story, max_output_tokens=2, store=False)
    assert WARM <= again.usage.input_tokens_details.cached_tokens < again.usage.input_tokens


def test_anthropic_counts_cache_reads_apart_from_input_tokens(server):
    client: anthropic.Anthropic = sdk_client(server.base_url)
    messages = [{"role": "user", "content": _story()}]
    first = client.messages.create(
        model="tiny", max_tokens=2, messages=messages, extra_body={"temperature": 0}
    )
    assert first.usage.cache_read_input_tokens < COLD and first.usage.cache_creation_input_tokens == 0
    prompt = first.usage.input_tokens + first.usage.cache_read_input_tokens
    again = client.messages.create(
        model="tiny", max_tokens=2, messages=messages, extra_body={"temperature": 0}
    )
    assert again.usage.cache_read_input_tokens >= WARM
    assert again.usage.input_tokens + again.usage.cache_read_input_tokens == prompt
    with client.messages.stream(
        model="tiny", max_tokens=2, messages=messages, extra_body={"temperature": 0}
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens >= WARM
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == prompt
