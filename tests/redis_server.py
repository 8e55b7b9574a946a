"""A real redis-server for tests: a free loopback port, its own temp dir, no persistence unless asked.

    @pytest.fixture(scope="module")
    def redis_server(tmp_path_factory):
        yield from running_redis(tmp_path_factory)

A restart test starts one with persistence arguments (e.g. AOF), stops it and starts it again on the same
port and directory: `server.stop(); server = server.restarted()`.

Needs the `redis-server` binary (Debian: apt-get install redis-server).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0
NO_PERSISTENCE = ("--save", "", "--appendonly", "no")


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen
    workdir: Path
    persistence: tuple[str, ...] = NO_PERSISTENCE

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> bytes:
        """One command over a raw socket (RESP), no client library: for readiness and tests."""
        request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(request.encode())
            return sock.recv(65536)

    def pause(self) -> None:
        """Stalled, not gone: connections are accepted by the kernel but nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.resume()  # a stopped process does not act on SIGTERM until continued
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def restarted(self) -> RedisServer:
        """A new redis-server on this one's port, directory and persistence (stop this one first)."""
        assert self.process.poll() is not None, "stop() the server before starting it again"
        return start_redis(self.workdir, persistence=self.persistence, port=self.port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(
    workdir: Path, *, persistence: Sequence[str] = NO_PERSISTENCE, port: int | None = None
) -> RedisServer:
    """redis-server with its data and log in workdir. `persistence`: redis-server arguments such as
    ("--appendonly", "yes", "--appendfsync", "everysec"); `port`: a fixed one (a restart), else a free one."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: run `make install` (it installs the system packages)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3 if port is None else 1):  # a free port can be taken between choosing and binding
        chosen = port if port is not None else _free_port()
        command = [
            binary, "--port", str(chosen), "--bind", "127.0.0.1", "--dir", str(workdir),
            *persistence, "--daemonize", "no", "--logfile", str(workdir / "redis.log"),
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = RedisServer(chosen, process, workdir, tuple(persistence))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if server.command("PING").startswith(b"+PONG"):
                    return server
            except OSError:
                pass
            time.sleep(0.05)
        server.stop()
    raise RuntimeError(f"redis-server did not start:\n{server.log()[-2000:]}")


def running_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """For a fixture: a server for the fixture's scope, stopped afterwards."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()
