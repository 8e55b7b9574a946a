"""Pulling a model from the Hugging Face Hub: what a reference names, which files to fetch, the download.

The network work is huggingface_hub's own (`HfApi.model_info`, `hf_hub_download`), so HF_ENDPOINT, HF_TOKEN,
HF_HUB_OFFLINE and its retries -- a transfer that drops mid-file is resumed with a Range request -- behave
as everywhere else. This module decides what to fetch, reports per-file progress and turns the Hub's
failures into statuses a client can act on. Everything here blocks: callers run it in a worker thread.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

PREFIXES = ("hf://", "https://huggingface.co/", "huggingface.co/", "hf.co/")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a checkpoint needs (weights, config, tokenizer, generation defaults), not READMEs, images or
# other formats of the same weights (*.bin, *.pth, onnx/) that would double the download.
CHECKPOINT_PATTERNS = (
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)  # fmt: skip
_HASH_CHUNK = 8 * 2**20
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


class PullError(Exception):
    """A pull that cannot succeed, with the HTTP status that says whose fault it is."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PullCancelled(Exception):
    """Raised from a progress callback to stop a download (the client went away)."""


@dataclass(frozen=True, slots=True)
class HubReference:
    repo_id: str  # ORG/REPO
    selector: str | None = None  # a file in the repo (…/x.gguf), or an Ollama-style tag such as Q4_K_M

    @property
    def names_file(self) -> bool:
        return self.selector is not None and self.selector.lower().endswith(".gguf")

    def default_name(self) -> str:
        """REPO lowercased, plus the file's stem (or the tag) when one is named: hf://o/r:m.gguf → r-m."""
        name = self.repo_id.split("/", 1)[1].lower()
        if self.selector:
            suffix = PurePosixPath(self.selector).stem if self.names_file else self.selector
            name += "-" + suffix.lower()
        return re.sub(r"[^a-z0-9._+-]+", "-", name).strip("-.") or "model"


def parse_reference(text: str) -> HubReference:
    """hf://ORG/REPO[:FILE]; hf.co/ORG/REPO[:TAG] as Ollama spells it is accepted too."""
    rest = next((text[len(p) :] for p in PREFIXES if text.lower().startswith(p)), None)
    if rest is None:
        raise PullError(
            400, f"cannot pull {text!r}: tandem pulls from Hugging Face, name hf://ORG/REPO[:FILE]"
        )
    repo_id, _, selector = rest.partition(":")
    repo_id = repo_id.strip("/")
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise PullError(400, f"invalid Hugging Face reference {text!r}: expected hf://ORG/REPO[:FILE]")
    if selector in ("", "latest"):  # Ollama clients append :latest to every name
        return HubReference(repo_id)
    if selector.startswith("/") or ".." in PurePosixPath(selector).parts:
        raise PullError(400, f"invalid file name {selector!r} in {text!r}")
    return HubReference(repo_id, selector)


@dataclass(frozen=True, slots=True)
class HubFile:
    path: str  # inside the repo
    size: int | None
    sha256: str | None  # known for LFS files: checked after download
    digest: str  # what progress lines carry: sha256:… for LFS files, else the git blob id


@dataclass(frozen=True, slots=True)
class PullPlan:
    reference: HubReference
    commit: str  # downloads are pinned to it, so a push during the pull cannot mix two versions
    backend: Literal["llamacpp", "paged"]
    files: tuple[HubFile, ...]
    local_dir: Path

    @property
    def model_path(self) -> Path:
        return self.local_dir / self.files[0].path if self.backend == "llamacpp" else self.local_dir


@dataclass(frozen=True, slots=True)
class FileProgress:
    file: HubFile
    completed: int
    total: int | None


@dataclass(frozen=True, slots=True)
class PullStatus:
    text: str


PullEvent = FileProgress | PullStatus
Reporter = Callable[[PullEvent], None]
ByteCounter = Callable[[int], None]  # told each chunk's size as it arrives (gateway.pull_space.WriteMeter)


def hub_error(exc: Exception, reference: HubReference, endpoint: str | None = None) -> PullError:
    # huggingface_hub (with httpx, httpcore and h2 under it) is imported by a pull, not by `tandem serve`
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        HTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    """The Hub's failures as client statuses: 404 for what does not exist upstream, 502 for the Hub itself."""
    repo = reference.repo_id
    if isinstance(exc, PullError):
        return exc
    if isinstance(exc, GatedRepoError):
        return PullError(403, f"{repo} is gated: accept its terms on the Hub and give the server an HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        return PullError(404, f"repository {repo} not found on the Hub (if it is private, set HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return PullError(404, f"revision not found in {repo}")
    if isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError):
        return PullError(404, f"file not found in {repo}: {exc}")
    if isinstance(exc, HFValidationError):
        return PullError(400, f"invalid Hugging Face reference: {exc}")
    if isinstance(exc, OfflineModeIsEnabled):
        return PullError(502, "the server runs with HF_HUB_OFFLINE set: it cannot download")
    if isinstance(exc, HfHubHTTPError) and exc.response.status_code == 401:
        return PullError(401, f"the Hub refused the server's credentials for {repo}: check HF_TOKEN")
    if isinstance(exc, HfHubHTTPError):
        return PullError(502, f"the Hub answered {exc.response.status_code} for {repo}")
    if isinstance(exc, HTTPError | LocalEntryNotFoundError):  # connection refused, timeouts, resets
        return PullError(502, f"cannot reach the Hugging Face Hub at {endpoint or constants.ENDPOINT}: {exc}")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return PullError(507, f"no space left on the server's disk for {repo}")
    if isinstance(exc, OSError | ValueError):  # a short transfer; a file too large without hf_xet
        return PullError(502, f"downloading {repo} failed: {exc}")
    raise exc


def _models_in(paths: list[str]) -> list[str]:
    """The GGUF files that are models: a split model counts once (its first shard), projectors not at all."""
    return sorted(
        p for p in paths
        if p.lower().endswith(".gguf") and not PurePosixPath(p).name.lower().startswith("mmproj")
        and ((shard := _SHARD.match(p)) is None or int(shard["index"]) == 1)
    )  # fmt: skip


def _with_shards(first: str, paths: list[str]) -> list[str]:
    """llama.cpp opens a split GGUF by its first shard and finds the others beside it."""
    shard = _SHARD.match(first)
    if shard is None:
        return [first]
    return sorted(p for p in paths if (other := _SHARD.match(p)) and other["stem"] == shard["stem"]
                  and other["count"] == shard["count"])  # fmt: skip


def _choose(reference: HubReference, paths: list[str]) -> tuple[Literal["llamacpp", "paged"], list[str]]:
    """One GGUF model (named, tagged, or the repo's only one), else the checkpoint's files."""
    ggufs = _models_in(paths)
    repo, selector = reference.repo_id, reference.selector
    if selector and reference.names_file:
        if selector not in paths:
            raise PullError(404, f"file {selector} not found in {repo}")
        return "llamacpp", _with_shards(selector, paths)
    if selector:  # a quantization tag, as in `ollama pull hf.co/ORG/REPO:Q4_K_M`
        tagged = [p for p in ggufs if selector.lower() in PurePosixPath(p).name.lower()]
        if len(tagged) != 1:
            status, found = (404, "no") if not tagged else (400, "several")
            raise PullError(status, f"{found} .gguf files in {repo} match {selector!r}: "
                                    f"{', '.join(tagged or ggufs) or 'none'}")  # fmt: skip
        return "llamacpp", _with_shards(tagged[0], paths)
    if len(ggufs) == 1:
        return "llamacpp", _with_shards(ggufs[0], paths)
    wanted = [
        p for p in paths if "/" not in p and any(fnmatch.fnmatch(p, pat) for pat in CHECKPOINT_PATTERNS)
    ]
    if "config.json" in wanted and any(p.endswith(".safetensors") for p in wanted):
        return "paged", sorted(wanted)
    if ggufs:
        raise PullError(400, f"{repo} holds several GGUF models; name one with hf://{repo}:FILE: "
                             f"{', '.join(ggufs)}")  # fmt: skip
    raise PullError(400, f"{repo} holds neither a .gguf file nor a safetensors checkpoint")


def plan_pull(reference: HubReference, root: Path, *, endpoint: str | None = None) -> PullPlan:
    """Ask the Hub what the repo holds (one request, bounded by HF_HUB_ETAG_TIMEOUT) and pick the files."""
    from huggingface_hub import HfApi, constants

    try:
        info = HfApi(endpoint=endpoint).model_info(
            reference.repo_id, files_metadata=True, timeout=constants.HF_HUB_ETAG_TIMEOUT
        )
    except Exception as exc:
        raise hub_error(exc, reference, endpoint) from exc
    if not info.sha or info.siblings is None:
        raise PullError(502, f"the Hub's answer for {reference.repo_id} lacks the commit or the file list")
    files = {
        s.rfilename: HubFile(
            path=s.rfilename,
            size=s.lfs.size if s.lfs else s.size,
            sha256=s.lfs.sha256 if s.lfs else None,
            digest=f"sha256:{s.lfs.sha256}" if s.lfs else (s.blob_id or s.rfilename),
        )
        for s in info.siblings
    }
    backend, chosen = _choose(reference, list(files))
    local_dir = root.joinpath(*reference.repo_id.split("/"))
    return PullPlan(reference, info.sha, backend, tuple(files[p] for p in chosen), local_dir)


def _progress_bar(file: HubFile, report: Reporter, started: list[bool], on_bytes: ByteCounter) -> type:
    """A tqdm stand-in for huggingface_hub: it only ever calls __init__, update, close and the context."""

    class Bar:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any) -> None:
            started.append(True)
            self.n, self.total = initial, total or file.size
            report(FileProgress(file, self.n, self.total))

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: int | float | None = 1) -> None:
            self.n += int(n or 0)
            on_bytes(int(n or 0))  # may raise PullError 507: the pull grew past its disk allowance
            report(FileProgress(file, self.n, self.total))  # may raise PullCancelled: stops the transfer

        def close(self) -> None:
            return None

    return Bar


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    plan: PullPlan, report: Reporter, *, endpoint: str | None = None, on_bytes: ByteCounter = lambda n: None
) -> Path:
    """Fetch the plan's files into its local_dir, one at a time, and return the model's path.

    Files already there at the same commit are kept (no transfer); an interrupted transfer is resumed by
    huggingface_hub's retries. One hf_hub_download per file rather than snapshot_download, which is the
    same thing underneath, because snapshot_download only reports progress summed over all files.
    """
    from huggingface_hub import hf_hub_download

    for file in plan.files:
        fresh: list[bool] = []  # a progress bar was opened: bytes moved, so the digest is worth checking
        try:
            path = Path(hf_hub_download(
                plan.reference.repo_id, file.path, revision=plan.commit, local_dir=plan.local_dir,
                endpoint=endpoint, tqdm_class=_progress_bar(file, report, fresh, on_bytes),
            ))  # fmt: skip
        except PullCancelled:
            raise
        except Exception as exc:
            raise hub_error(exc, plan.reference, endpoint) from exc
        size = path.stat().st_size
        if fresh and file.sha256:
            report(PullStatus(f"verifying sha256 digest of {file.path}"))
            if _sha256(path) != file.sha256:
                path.unlink(missing_ok=True)
                raise PullError(502, f"{file.path} from {plan.reference.repo_id} does not match its sha256")
        report(FileProgress(file, size, file.size or size))
    return plan.model_path
