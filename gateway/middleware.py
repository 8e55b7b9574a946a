"""ASGI middleware: request ids, the x-tandem-backend header, and the request body (size limit, Unicode)."""

from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import APIError
from gateway.metrics import NO_DEPLOYMENT, NO_TEAM, UNKNOWN_MODEL, UNMATCHED_ROUTE, GatewayMetrics
from gateway.request_body import InvalidTextError, error_response, has_lone_surrogate, read_body, replay

REQUEST_ID_HEADER = "x-request-id"
BACKEND_HEADER = "x-tandem-backend"
DEPLOYMENT_HEADER = "x-tandem-deployment"
GATEWAY_BACKEND = "gateway"  # what x-tandem-backend says when no model backend was involved
VLLM_ROOT_PATHS = ("/tokenize", "/detokenize")  # API routes vLLM serves outside /v1
COUNTED_PREFIXES = ("/v1/", "/api/", *VLLM_ROOT_PATHS)  # API traffic; not /metrics, /health


JSON_BODY_PREFIXES = ("/v1/", "/api/", "/admin/", *VLLM_ROOT_PATHS)
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
JSON_CONTENT_TYPE = (b"content-type", b"application/json")


def _as_json_body(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Every body of tandem's APIs is JSON, whatever the Content-Type says: Ollama reads it so, `curl -d`
    sends form encoding and LiteLLM's ollama providers send no type at all. A body that is not JSON then
    fails as what it is ("could not parse the JSON body"), not as a wrong content type."""
    kept = [(k, v) for k, v in headers if k.lower() != b"content-type"]
    return [*kept, JSON_CONTENT_TYPE]


class BodyTooLargeError(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large"
        )


class TandemHeadersMiddleware:
    def __init__(self, app: ASGIApp, max_request_bytes: int, metrics: GatewayMetrics) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(JSON_BODY_PREFIXES) and scope["method"] in BODY_METHODS:
            scope["headers"] = _as_json_body(scope["headers"])
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        counted = scope["path"].startswith(COUNTED_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                if counted:
                    self.metrics.count_request(
                        state.get("tandem_model", UNKNOWN_MODEL),
                        state.get("tandem_backend", GATEWAY_BACKEND),
                        message["status"],
                        state.get("tandem_team", NO_TEAM),
                        state.get("tandem_deployment", NO_DEPLOYMENT),
                        # the template ("/v1/responses/{response_id}"), never the raw path: bounded labels
                        getattr(scope.get("route"), "path", UNMATCHED_ROUTE),
                    )
                raw = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                if not any(k.lower() == BACKEND_HEADER.encode() for k, _ in raw):
                    raw.append(
                        (BACKEND_HEADER.encode(), state.get("tandem_backend", GATEWAY_BACKEND).encode())
                    )
                raw.append((REQUEST_ID_HEADER.encode(), request_id.encode("latin-1")))
                if "tandem_deployment" in state:
                    raw.append((DEPLOYMENT_HEADER.encode(), state["tandem_deployment"].encode("latin-1")))
                present = {k.lower() for k, _ in raw}
                for name, value in state.get("ratelimit_headers", {}).items():
                    if name.lower().encode() not in present:
                        raw.append((name.lower().encode(), value.encode("latin-1")))
                message = {**message, "headers": raw}
            await send(message)

        declared = headers.get(b"content-length")
        read = None
        if declared is None or not declared.isdigit() or int(declared) <= self.max_request_bytes:
            read = await read_body(receive, self.max_request_bytes)  # counts a chunked body as it arrives
        if read is None:
            too_large = BodyTooLargeError(self.max_request_bytes)
            await error_response(scope["path"], too_large)(scope, receive, send_with_headers)
            return
        body, disconnect = read
        if has_lone_surrogate(body):
            await error_response(scope["path"], InvalidTextError())(scope, receive, send_with_headers)
            return
        await self.app(scope, replay(body, disconnect, receive), send_with_headers)
