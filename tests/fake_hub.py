"""A local stand-in for the parts of the Hugging Face Hub that huggingface_hub's downloads use.

`GET /api/models/{repo}[/revision/{rev}]` (model info with `siblings`, `?blobs=true` metadata) and
`HEAD|GET /{repo}/resolve/{rev}/{file}` with X-Repo-Commit, ETag, Content-Length and Range. Error answers
carry the Hub's X-Error-Code so huggingface_hub raises the same exceptions as against the real Hub. Tests
can make a repo fail, stall, or drop a file's transfer once midway, announce a file's size wrongly, and
read back every request made.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors")  # stored in LFS on the real Hub: the ETag is the sha256
_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    range: str | None
    status: int


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str
    announced: dict[str, int] = field(default_factory=dict)  # file -> the size model info claims (a lie)

    def etag(self, name: str) -> str:
        data = self.files[name]
        if name.endswith(LFS_SUFFIXES):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id

    def sibling(self, name: str) -> dict:
        size = self.announced.get(name, len(self.files[name]))
        entry: dict = {"rfilename": name, "size": size, "blobId": self.etag(name)[:40]}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"size": size, "sha256": self.etag(name), "pointerSize": 134}
        return entry


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    failing: dict[str, int] = field(default_factory=dict)  # repo -> status every request gets
    stalling: dict[str, float] = field(default_factory=dict)  # repo -> seconds before any answer
    drops: dict[tuple[str, str], int] = field(default_factory=dict)  # (repo, file) -> bytes sent, once
    throttled: dict[str, float] = field(default_factory=dict)  # repo -> seconds per MiB of file data
    _server: ThreadingHTTPServer | None = None

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> FakeRepo:
        commit = hashlib.sha1((repo_id + "\n".join(sorted(files))).encode()).hexdigest()
        self.repos[repo_id] = FakeRepo(files, commit)
        return self.repos[repo_id]

    def drop_once(self, repo_id: str, name: str, after_bytes: int) -> None:
        """The next full GET of the file sends `after_bytes` of it, then the connection is cut."""
        self.drops[(repo_id, name)] = after_bytes

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-hub").start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, format: str, *args: object) -> None:  # quiet: the test output is the record
        return None

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        info, resolve = _INFO.match(path), _RESOLVE.match(path)
        repo_id = (info or resolve)["repo"] if (info or resolve) else ""
        time.sleep(self.hub.stalling.get(repo_id, 0))
        if repo_id in self.hub.failing:
            return self._error(self.hub.failing[repo_id], "", "internal error", path, body)
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found", path, body)
        revision = (info or resolve)["rev"]  # type: ignore[index]
        if revision not in (None, "main", repo.commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id", path, body, repo.commit)
        if info:
            siblings = [repo.sibling(name) for name in sorted(repo.files)]
            payload = json.dumps({"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                                  "siblings": siblings}).encode()  # fmt: skip
            return self._send(200, {"Content-Type": "application/json"}, payload, path, body)
        name = resolve["file"]  # type: ignore[index]
        if name not in repo.files:
            return self._error(404, "EntryNotFound", "Entry not found", path, body, repo.commit)
        self._send_file(repo, repo_id, name, path, body)

    def _send_file(self, repo: FakeRepo, repo_id: str, name: str, path: str, body: bool) -> None:
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{repo.etag(name)}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}  # fmt: skip
        requested = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", requested or "")
        if body and match:
            start, end = int(match[1]), int(match[2] or len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, headers, data[start : end + 1], path, body)
        cut = self.hub.drops.pop((repo_id, name), None) if body else None
        if cut is None and not (body and repo_id in self.hub.throttled):
            return self._send(200, headers, data, path, body)
        self._record(200, path)
        self.send_response(200)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if cut is not None:
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True  # the client sees a body shorter than Content-Length
            return
        try:
            for start in range(0, len(data), 2**20):  # throttled: a MiB at a time
                time.sleep(self.hub.throttled[repo_id])
                self.wfile.write(data[start : start + 2**20])
        except (BrokenPipeError, ConnectionResetError):  # the downloader gave up: that is the test
            self.close_connection = True

    def _error(self, status: int, code: str, message: str, path: str, body: bool, commit: str = "") -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        headers |= {"X-Error-Code": code} if code else {}
        headers |= {"X-Repo-Commit": commit} if commit else {}
        self._send(status, headers, json.dumps({"error": message}).encode(), path, body)

    def _send(self, status: int, headers: dict[str, str], payload: bytes, path: str, body: bool) -> None:
        self._record(status, path)
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _record(self, status: int, path: str) -> None:
        self.hub.requests.append(RecordedRequest(self.command, path, self.headers.get("Range"), status))
