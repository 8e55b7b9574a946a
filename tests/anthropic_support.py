"""What the Anthropic Messages API tests share: tools, the question, an SDK client, the envelope check."""

from __future__ import annotations

import json

import anthropic
import httpx

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


def sdk_client(base_url: str, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=base_url, max_retries=0, timeout=60, **{"api_key": "unused", **kwargs}
    )


# the SDK has no sampling arguments any more (Anthropic's newest models take none); the API still does
GREEDY = {"extra_body": {"temperature": 0}}


def create(client: anthropic.Anthropic, **kwargs):
    return client.messages.create(**{"model": "tiny", "max_tokens": 8, "messages": ASK, **GREEDY, **kwargs})


def prompt_tokens(usage) -> int:
    """The whole prompt: Anthropic's input_tokens leave out what the (prefix) cache read."""
    return usage.input_tokens + (usage.cache_read_input_tokens or 0)


def post(url: str, **kwargs) -> httpx.Response:
    return httpx.post(url, timeout=60, **kwargs)  # the first tool schema imports xgrammar: seconds


def envelope(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    return body["error"]["message"]


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = json.loads(line.removeprefix("data: "))
            assert data["type"] == name
            events.append((name, data))
    return events
