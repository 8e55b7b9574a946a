"""ASGI middleware: request ids, the x-tandem-backend header, and the request body size limit."""

from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import APIError
from gateway.metrics import NO_DEPLOYMENT, NO_TEAM, UNKNOWN_MODEL, GatewayMetrics

REQUEST_ID_HEADER = "x-request-id"
BACKEND_HEADER = "x-tandem-backend"
DEPLOYMENT_HEADER = "x-tandem-deployment"
GATEWAY_BACKEND = "gateway"  # what x-tandem-backend says when no model backend was involved
COUNTED_PREFIXES = ("/v1/", "/api/")  # API traffic; not /metrics, /health


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
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            await BodyTooLargeError(self.max_request_bytes).response()(scope, receive, send_with_headers)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    raise BodyTooLargeError(self.max_request_bytes)
            return message

        await self.app(scope, limited_receive, send_with_headers)
