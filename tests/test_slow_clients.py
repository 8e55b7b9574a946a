"""Slow clients cannot hold connections open: request headers have a deadline (TANDEM_HEADER_TIMEOUT_S)."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import model_entry, start_server

HEADER_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def slow_server(tiny_llama, tmp_path_factory):
    config = {"profile": "dev", "profiles": {"dev": {"models": [model_entry(tiny_llama, "dev")]}}}
    server = start_server(config, tmp_path_factory.mktemp("slow-clients"),
                          env={"TANDEM_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)})  # fmt: skip
    yield server
    server.stop()


def _connect(server) -> socket.socket:
    address = urlparse(server.base_url)
    sock = socket.create_connection((address.hostname, address.port), timeout=HEADER_TIMEOUT_S + 10)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Reads until the server closes the connection (b"") or the socket's own timeout says it did not."""
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_connections_with_incomplete_headers_are_closed(slow_server):
    partial = [
        b"",  # connected, never sent a byte
        b"GET /health HTTP/1.1\r\n",  # a request line, no headers
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl",  # cut mid-header
    ]
    sockets = []
    for data in partial * 3:
        sock = _connect(slow_server)
        sock.sendall(data)
        sockets.append(sock)
    started = time.monotonic()
    for sock in sockets[::2]:  # a slowloris keeps sending a header now and then: it does not help
        sock.sendall(b"X-Slow: 1\r\n")
    try:
        assert all(_closed_by_server(sock) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()
    print(f"{len(sockets)} slow connections closed {time.monotonic() - started:.1f}s after they opened")
    assert httpx.get(f"{slow_server.base_url}/health").status_code == 200  # the server itself is fine


def test_a_kept_alive_connection_gets_the_deadline_again_for_its_next_request(slow_server):
    sock = _connect(slow_server)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next request's headers never finish
        assert _closed_by_server(sock)
    finally:
        sock.close()


def test_headers_sent_in_pieces_within_the_deadline_are_served(slow_server):
    sock = _connect(slow_server)
    try:
        for piece in (b"GET /health HTTP/1.1\r\n", b"Host: x\r\n", b"Connection: close\r\n\r\n"):
            sock.sendall(piece)
            time.sleep(HEADER_TIMEOUT_S / 5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        sock.close()


def test_a_websocket_upgrade_is_answered_as_plain_http(slow_server):
    """tandem has no WebSocket route and runs uvicorn without a WebSocket protocol (gateway.drain)."""
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    reply = httpx.get(f"{slow_server.base_url}/health", headers=upgrade, timeout=10)
    assert reply.status_code == 200 and reply.json()["status"] == "ok"
    assert "upgrade" not in reply.headers.get("connection", "").lower()
