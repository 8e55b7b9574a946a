"""A request's body, read in full before the app sees it: bounded in size, and text that is Unicode.

Reading it here rather than inside the route is what makes the size limit hold for bodies without a
Content-Length (chunked): counted as the chunks arrive, refused with 413 at the first byte past the limit,
whereas an error raised from inside the framework's body parsing became its generic 400.
"""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse
from starlette.types import Message, Receive

from gateway.errors import APIError, path_envelope


class InvalidTextError(APIError):
    def __init__(self) -> None:
        super().__init__(
            400,
            "The request body holds a lone UTF-16 surrogate (e.g. \\ud800), which is not text: "
            "send valid Unicode.",
            code="invalid_unicode",
        )


async def read_body(receive: Receive, limit: int) -> tuple[bytes, Message | None] | None:
    """The whole body, and the disconnect message if the client went away while sending it; None as soon
    as it is longer than `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), message
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), None


def replay(body: bytes, disconnect: Message | None, receive: Receive) -> Receive:
    """A receive() that hands the app the body read already, then what the connection says next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    if disconnect is not None:
        pending.append(disconnect)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def has_lone_surrogate(body: bytes) -> bool:
    """Whether the JSON text holds a UTF-16 surrogate that is not half of a pair: as an escape (\\ud800),
    or as the UTF-8 bytes of one, which Python's json module decodes with surrogatepass. Either reaches
    a tokenizer as a str that cannot be encoded. Bodies without a surrogate escape or an 0xED byte (the
    lead byte of UTF-8 surrogates) are cleared by a substring search; the rest are decoded to be sure."""
    if b"\\ud" not in body and b"\\uD" not in body:
        if b"\xed" not in body:
            return False
        try:
            body.decode("utf-8")  # strict: valid UTF-8 holds no surrogates (0xED also leads Hangul)
            return False
        except UnicodeDecodeError:
            pass
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return False  # not JSON (or nested past what Python parses): the route answers that
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except RecursionError:
        return False
    return False


def error_response(path: str, error: APIError) -> JSONResponse:
    """The error in its protocol's envelope, for answers given before the app runs."""
    return path_envelope(path, error)
