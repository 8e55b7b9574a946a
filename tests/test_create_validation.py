"""Creating models through the API cannot break the server: broken files are refused, a file that breaks
later leaves every listing working (across restarts too), and a full disk fails the create cleanly."""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import model_entry, start_server


def _config(tiny) -> dict:
    return {"profile": "dev", "profiles": {"dev": {"models": [model_entry(tiny, "dev")]}}}


@pytest.fixture(scope="module")
def store_server(tiny_llama, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("create-validation")
    server = start_server(_config(tiny_llama), workdir)
    yield server, workdir
    server.stop()


def _tags(server) -> list[str]:
    response = httpx.get(f"{server.base_url}/api/tags")
    assert response.status_code == 200, response.text
    return [m["name"] for m in response.json()["models"]]


def _records(workdir: Path) -> list[Path]:
    return sorted((workdir / "home" / "models" / "created").rglob("*.json"))


def _create(server, name: str, source: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/api/create", json={"model": name, "from": source, "stream": False},
                      timeout=60)  # fmt: skip


def test_create_refuses_files_no_backend_can_read(store_server, tiny_llama, tmp_path):
    server, workdir = store_server
    whole = Path(tiny_llama.gguf_path).read_bytes()
    broken = {"empty.gguf": b"", "truncated.gguf": whole[: len(whole) // 3], "header.gguf": whole[:64],
              "text.gguf": b"this is not a model\n" * 100}  # fmt: skip
    for file_name, content in broken.items():
        (tmp_path / file_name).write_bytes(content)
        response = _create(server, "broken", str(tmp_path / file_name))
        assert response.status_code == 400, (file_name, response.text)
        assert "not a readable model" in response.json()["error"]
        assert "broken:latest" not in _tags(server)
    assert not [r for r in _records(workdir) if r.name.startswith("broken")]


def test_a_file_broken_after_create_leaves_every_listing_working(store_server, tiny_llama, tmp_path):
    server, workdir = store_server
    fragile_file = tmp_path / "fragile.gguf"
    shutil.copyfile(tiny_llama.gguf_path, fragile_file)
    long_name = "a:" * 127 + "a"  # 255 bytes, 509 once ':' is escaped in the record's file name
    assert _create(server, "fragile", str(fragile_file)).status_code == 200
    assert _create(server, long_name, "tiny").status_code == 200
    assert all(len(r.name.encode()) <= 255 for r in _records(workdir))
    with fragile_file.open("r+b") as file:
        file.truncate(100)  # the disk, another process or a half-finished copy: not the API
    junk = _records(workdir)[0].parent / "junk.json"
    junk.write_text('{"name": "junk", "backend": ')  # a record cut short: the server still starts
    again = start_server(_config(tiny_llama), workdir)  # the same TANDEM_HOME: the records load again
    junk.unlink()
    assert "junk.json cannot be read, skipped" in again.log()
    try:
        for running in (server, again):
            names = _tags(running)
            assert "fragile:latest" not in names and "tiny:latest" in names and long_name in names
            assert httpx.get(f"{running.base_url}/api/ps").status_code == 200
            assert httpx.get(f"{running.v1}/models").status_code == 200
            shown = httpx.post(f"{running.base_url}/api/show", json={"model": "fragile"})
            assert shown.status_code == 503 and "cannot be read" in shown.json()["error"]
            assert "left out of the listing" in running.log()
    finally:
        again.stop()
    for name in ("fragile", long_name):
        assert (
            httpx.request("DELETE", f"{server.base_url}/api/delete", json={"model": name}).status_code == 200
        )


@contextlib.contextmanager
def _full_disk(directory: Path):
    """A 64 KiB tmpfs mounted over `directory`, filled up (needs root, as CI has; skipped elsewhere)."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(directory)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {mounted.stderr.strip()}")
    try:
        with (directory / "filler").open("wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"x" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_a_full_disk_fails_the_create_with_507_and_leaves_nothing(store_server, tmp_path):
    server, workdir = store_server
    created = workdir / "home" / "models" / "created"
    with _full_disk(created) as disk:
        response = _create(server, "overflow", "tiny")
        assert response.status_code == 507, response.text
        assert "no space left" in response.json()["error"]
        assert sorted(p.name for p in disk.rglob("*") if p.is_file()) == ["filler"]  # no .tmp residue
        assert "overflow:latest" not in _tags(server)  # not served while not persisted
        chat = {"model": "overflow", "messages": [{"role": "user", "content": "x"}], "stream": False}
        assert httpx.post(f"{server.base_url}/api/chat", json=chat).status_code == 404
    assert not [r for r in _records(workdir) if r.name.startswith("overflow")]
    assert _create(server, "overflow", "tiny").status_code == 200  # room again: the same create succeeds
    assert (
        httpx.request("DELETE", f"{server.base_url}/api/delete", json={"model": "overflow"}).status_code
        == 200
    )
