"""The access layer's errors, in OpenAI's envelope (gateway.errors.APIError)."""

from __future__ import annotations

from gateway.errors import APIError

STORE_RETRY_AFTER_S = 1


def invalid_api_key(message: str) -> APIError:
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key")


def insufficient_permissions() -> APIError:
    return APIError(
        403,
        "You have insufficient permissions for this operation: the admin API needs the master key.",
        type="invalid_request_error",
        code="insufficient_permissions",
    )


def store_unavailable() -> APIError:
    return APIError(
        503,
        "Access control is unavailable: tandem cannot reach its Redis store. Please try again shortly.",
        type="server_error",
        code="access_store_unavailable",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


def not_found(message: str) -> APIError:
    return APIError(404, message, type="invalid_request_error", code="not_found")
