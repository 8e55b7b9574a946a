"""What the Responses API tests share: a function tool, the room a grammar needs, and two ways to call."""

from __future__ import annotations

import httpx

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "name": "get_weather", "description": "weather", "parameters": WEATHER}]
ROOM = 200  # enough for a grammar's JSON on a random model


def create(server, **kwargs):
    return server.openai().responses.create(
        **{"model": "tiny", "max_output_tokens": 8, "temperature": 0, "input": "Hello", **kwargs}
    )


def post(server, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.v1}/responses", json=body, timeout=60, **kwargs)
