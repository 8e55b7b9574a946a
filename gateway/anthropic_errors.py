"""Anthropic's error envelope, {"type": "error", "error": {"type", "message"}}, for everything under
/v1/messages: its error types go by status, and a full queue is its 529 overloaded_error.

No import of gateway.errors here (which picks this envelope by path): the error arrives as its parts.
"""

from __future__ import annotations

import json
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel

ANTHROPIC_PATH = "/v1/messages"  # and /v1/messages/count_tokens

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
]
_BY_STATUS: dict[int, ErrorType] = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
}
OVERLOADED = 529  # Anthropic's status for "try again shortly", where tandem's OpenAI side answers 503


class AnthropicErrorBody(BaseModel):
    type: ErrorType
    message: str


class AnthropicError(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorBody


def is_anthropic_path(path: str) -> bool:
    return path == ANTHROPIC_PATH or path.startswith(f"{ANTHROPIC_PATH}/")


def anthropic_status(status: int) -> tuple[int, ErrorType]:
    """The status and error type Anthropic's clients expect for one of tandem's statuses."""
    if status == 503:  # a full queue, a model still loading, the access store down: all retried later
        return OVERLOADED, "overloaded_error"
    if status in _BY_STATUS:
        return status, _BY_STATUS[status]
    if status >= 500:
        return status, "api_error"
    return status, "invalid_request_error"


def anthropic_error(status: int, message: str) -> AnthropicError:
    return AnthropicError(error=AnthropicErrorBody(type=anthropic_status(status)[1], message=message))


def anthropic_error_response(status: int, message: str, headers: dict[str, str]) -> JSONResponse:
    code, _ = anthropic_status(status)
    return JSONResponse(anthropic_error(status, message).model_dump(), status_code=code, headers=headers)


def anthropic_error_event(status: int, message: str) -> str:
    """An error once the stream has started: Anthropic's `error` event."""
    return f"event: error\ndata: {json.dumps(anthropic_error(status, message).model_dump())}\n\n"
