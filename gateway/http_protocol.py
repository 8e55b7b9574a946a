"""The server's HTTP/1.1 connections: uvicorn's httptools protocol, plus a deadline for request headers.

uvicorn's keep-alive timeout closes an idle connection only until its next byte arrives, and httptools
has no header timeout: a client that opens a connection and sends a header line now and then (slowloris)
holds a socket and a file descriptor for as long as it likes. Like nginx's client_header_timeout, a
connection whose request line and headers are not all in within `header_timeout_s` of the connection
opening (first request) or of the request's first byte (later requests) is closed.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("tandem.gateway")


def with_header_timeout(header_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's `http=` protocol class, closing connections whose headers take longer than this."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:  # a later request on a kept-alive connection
                self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                logger.debug("closing a connection from %s: no complete request headers within %.0fs",
                             self.client, header_timeout_s)  # fmt: skip
                self.transport.close()

    return HeaderTimeoutProtocol
