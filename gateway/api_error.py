"""APIError, the error every route raises, and OpenAI's error envelope it carries.

Apart from gateway.errors (the FastAPI handlers that answer it in each protocol's envelope) so that what
raises it at start-up (the model registry) imports no FastAPI: `tandem serve` begins its model's load
before the app is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:
    from starlette.responses import JSONResponse


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class APIError(Exception):
    """An error with its HTTP status and OpenAI envelope fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        ollama_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.ollama_message = ollama_message or message  # Ollama's wording, where it has its own
        self.status = status
        self.body = ErrorBody(message=message, type=type, param=param, code=code)
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        from starlette.responses import JSONResponse

        return JSONResponse(
            ErrorResponse(error=self.body).model_dump(), status_code=self.status, headers=self.headers
        )
