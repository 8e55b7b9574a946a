"""Adapter models created at run time (/api/create with ADAPTER, the admin API) persist as JSON records in an
`adapters/` folder beside the created models' records, written as those are: flushed under a temporary
name, renamed into place once the adapter is served."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.config import AdapterSpec
from gateway.model_store import ModelStore, PendingRecord
from gateway.model_store import _store_error as store_error  # the same messages and statuses (507: disk full)

logger = logging.getLogger("tandem.gateway")


class AdapterRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str  # the name of the model whose backend serves it
    adapter: AdapterSpec


class AdapterStore:
    def __init__(self, models: ModelStore) -> None:
        self.root = models.root / "adapters"
        self._names = ModelStore(self.root)  # the same file naming as the models' records

    def load(self) -> list[AdapterRecord]:
        """Every readable record; one that cannot be read is logged and skipped, never fatal."""
        if not self.root.is_dir():
            return []
        records = []
        for path in sorted(self.root.glob("*.json")):
            try:
                records.append(AdapterRecord.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError) as exc:
                logger.error("created adapter record %s cannot be read, skipped: %s", path, exc)
        return records

    def prepare(self, record: AdapterRecord) -> PendingRecord:
        """Written and fsynced under a temporary name; raises StoreError and leaves nothing behind."""
        target = self._names._file(record.adapter.name)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        except OSError as exc:
            raise store_error(exc, target) from None
        pending = PendingRecord(Path(temporary), target)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(json.dumps(record.model_dump(mode="json"), indent=2))
                file.flush()
                os.fsync(file.fileno())
        except OSError as exc:
            pending.discard()
            raise store_error(exc, target) from None
        return pending

    def delete(self, name: str) -> bool:
        with contextlib.suppress(FileNotFoundError):
            self._names._file(name).unlink()
            return True
        return False
