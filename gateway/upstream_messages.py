"""A conversation's messages as an OpenAI chat request's, for remote upstreams (all of them speak it).

Every protocol reaches a remote model this way: Ollama's /api/chat and /api/generate, the Responses API
and Anthropic's Messages API map into the one Conversation, and it goes upstream as chat messages.
"""

from __future__ import annotations

from typing import Any

from backends.conversation import ImagePart, Message, TextPart

# base64 openings of the image formats Ollama clients send (Ollama's images carry no MIME type)
_IMAGE_TYPES = (
    ("iVBOR", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)


def image_url(image: ImagePart) -> str:
    """An http(s) or data: URL as it is; Ollama's bare base64 as a data: URL of the format it opens with."""
    if image.url.startswith(("data:", "http://", "https://")):
        return image.url
    mime = next((mime for prefix, mime in _IMAGE_TYPES if image.url.startswith(prefix)), "image/png")
    return f"data:{mime};base64,{image.url}"


def openai_message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role.value}
    if message.images:
        out["content"] = [
            {"type": "text", "text": part.text}
            if isinstance(part, TextPart)
            else {
                "type": "image_url",
                "image_url": {"url": image_url(part), **({"detail": part.detail} if part.detail else {})},
            }
            for part in message.content
        ]
    else:
        out["content"] = message.text if message.text or not message.tool_calls else None
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out
