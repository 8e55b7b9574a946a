"""Models created through the API (Modelfiles, copies) persist as JSON specs under TANDEM_HOME."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from gateway.config import ModelSpec

logger = logging.getLogger("tandem.gateway")
MAX_FILE_NAME_BYTES = 255  # NAME_MAX of Linux and macOS file systems


class StoreError(Exception):
    """A record could not be written; `status` is the HTTP status to answer (507: the disk is full)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class PendingRecord:
    """A record written and flushed to disk under a temporary name, not yet in force.

    commit() renames it into place atomically; discard() removes it. Serving the model between the two
    means it is served only once it is safely on disk, and persisted only if serving it succeeded.
    """

    temporary: Path
    target: Path

    def commit(self) -> None:
        try:
            os.replace(self.temporary, self.target)
            _fsync_directory(self.target.parent)  # the rename itself survives a crash
        except OSError as exc:
            self.discard()
            raise _store_error(exc, self.target) from None

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.temporary.unlink()


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _store_error(exc: OSError, path: Path) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"cannot save the model: no space left on the device holding {path.parent}", 507)
    return StoreError(f"cannot save the model in {path.parent}: {exc.strerror or exc}", 500)


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, name: str) -> Path:
        # model names may hold ':' and '/'; one flat file name per model, readable where it fits
        escaped = name.replace("%", "%25").replace("/", "%2F").replace(":", "%3A") + ".json"
        if len(escaped.encode()) > MAX_FILE_NAME_BYTES:  # load() reads the name from inside the record
            escaped = f"{escaped[:100]}~{hashlib.sha256(name.encode()).hexdigest()[:32]}.json"
        return self.root / escaped

    def load(self) -> list[ModelSpec]:
        """Every readable record; one that cannot be read is logged and skipped, never fatal."""
        if not self.root.is_dir():
            return []
        specs = []
        for path in sorted(self.root.glob("*.json")):
            try:
                specs.append(ModelSpec.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError) as exc:
                logger.error("created model record %s cannot be read, skipped: %s", path, exc)
        return specs

    def prepare(self, spec: ModelSpec) -> PendingRecord:
        """Write `spec` to a temporary file and fsync it; raises StoreError and leaves nothing behind."""
        target = self._file(spec.name)
        text = json.dumps(spec.model_dump(mode="json", exclude_defaults=True), indent=2)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        except OSError as exc:
            raise _store_error(exc, target) from None
        pending = PendingRecord(Path(temporary), target)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())  # on a full disk, write or fsync fails here, not after the rename
        except OSError as exc:
            pending.discard()
            raise _store_error(exc, target) from None
        return pending

    def save(self, spec: ModelSpec) -> None:
        """Atomic: a crash mid-write never leaves a half-written model behind."""
        self.prepare(spec).commit()

    def delete(self, name: str) -> bool:
        try:
            self._file(name).unlink()
        except FileNotFoundError:
            return False
        return True
