"""Every failure leaves in its protocol's envelope: OpenAI's {"error": {"message", "type", "param", "code"}},
under /api/ Ollama's {"error": "message"}, under /v1/messages Anthropic's (gateway.anthropic_errors)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backends.base import BackendError, BackendUnavailableError, GenerationFailedError, QueueFullError
from backends.remote.upstream import UpstreamError
from backends.structured import InvalidStructuredOutputError
from gateway.anthropic_errors import anthropic_error_response, is_anthropic_path
from gateway.api_error import APIError

logger = logging.getLogger("tandem.gateway")

OLLAMA_PREFIX = "/api/"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


MAX_NAMES_IN_MESSAGE = 20


def model_not_found(model: str, available: list[str] | None = None) -> APIError:
    """`available`: the names the caller may use (never others'), so a typo is easy to see."""
    hint = ""
    if available is not None:
        shown = ", ".join(available[:MAX_NAMES_IN_MESSAGE]) or "none"
        extra = len(available) - MAX_NAMES_IN_MESSAGE
        more = f" and {extra} more" if extra > 0 else ""
        hint = f" Models you can use: {shown}{more}."
    return APIError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.{hint}",
        param="model",
        code="model_not_found",
        ollama_message=f"model '{model}' not found.{hint}",
    )


def _param_of(location: tuple[str | int, ...]) -> str | None:
    parts = [p for p in location if p != "body"]
    # pydantic names union members and type tags in locations ("str", "list[...]", "function-after[...]")
    parts = [p for p in parts if isinstance(p, int) or ("[" not in p and p not in ("str", "int", "float"))]
    if not parts:
        return None
    param = ""
    for part in parts:
        param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else part)
    return param


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first: Mapping[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first["type"] == "json_invalid":
        return bad_request(
            f"We could not parse the JSON body of your request: {first.get('ctx', {}).get('error', '')}"
        )
    param = _param_of(tuple(first["loc"]))
    if first["type"] == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {param}", param=param)
    if first["type"] == "missing":
        return bad_request(f"Missing required parameter: '{param}'.", param=param)
    if first["type"] == "model_attributes_type":
        return bad_request("The request body must be a JSON object.")
    message = first["msg"].removeprefix("Value error, ")
    return bad_request(f"Invalid value for '{param}': {message}", param=param)


def path_envelope(path: str, error: APIError) -> JSONResponse:
    """Ollama's native API (/api/...) answers {"error": "message"}, Anthropic's (/v1/messages) its
    {"type": "error", "error": {...}}; everything else OpenAI's envelope."""
    if path.startswith(OLLAMA_PREFIX):
        return JSONResponse({"error": error.ollama_message}, status_code=error.status, headers=error.headers)
    if is_anthropic_path(path):
        return anthropic_error_response(error.status, error.body.message, error.headers)
    return error.response()


def _envelope(request: Request, error: APIError) -> JSONResponse:
    return path_envelope(request.url.path, error)


def upstream_api_error(exc: UpstreamError) -> APIError:
    kind = "server_error" if exc.status >= 500 else "invalid_request_error"
    return APIError(exc.status, str(exc), type=kind, code=exc.code)


def backend_api_error(exc: BackendError) -> APIError:
    """A backend's refusal: its own trouble is a 503 (the client may retry), anything else the request's."""
    if isinstance(exc, QueueFullError):
        headers = {"Retry-After": str(exc.retry_after_s)}
        return APIError(503, str(exc), type="server_overloaded", code="queue_full", headers=headers)
    if isinstance(exc, BackendUnavailableError):
        return APIError(503, str(exc), type="server_error", code="backend_unavailable")
    if isinstance(exc, GenerationFailedError):  # this request failed in a backend that serves on
        return APIError(500, str(exc), type="server_error", code="generation_failed")
    if isinstance(exc, UpstreamError):
        return upstream_api_error(exc)
    if isinstance(exc, InvalidStructuredOutputError):
        return bad_request(str(exc), param="response_format")
    return bad_request(str(exc) or type(exc).__name__, code="invalid_request")


def as_api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc)
    if isinstance(exc, BackendError):
        return backend_api_error(exc)
    if isinstance(exc, StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return APIError(exc.status_code, message, type=kind, headers=dict(exc.headers or {}))
    logger.error("unexpected error while serving a request", exc_info=exc)
    return APIError(500, "The server had an error while processing your request.", type="server_error")


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return _envelope(request, as_api_error(exc))

    # each named here, not only under Exception: Starlette re-raises what reaches the Exception handler,
    # and the server then logs it as a crash
    for kind in (APIError, RequestValidationError, BackendError, StarletteHTTPException):
        app.add_exception_handler(kind, handle)
    app.add_exception_handler(Exception, handle)
