"""Models created through the API (Modelfiles, copies) persist as JSON specs under TANDEM_HOME."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from gateway.config import ModelSpec


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, name: str) -> Path:
        # model names may hold ':' and '/'; keep one flat, reversible file name per model
        return self.root / (name.replace("%", "%25").replace("/", "%2F").replace(":", "%3A") + ".json")

    def load(self) -> list[ModelSpec]:
        if not self.root.is_dir():
            return []
        return [ModelSpec.model_validate_json(path.read_text()) for path in sorted(self.root.glob("*.json"))]

    def save(self, spec: ModelSpec) -> None:
        """Atomic: a crash mid-write never leaves a half-written model behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        with os.fdopen(descriptor, "w") as file:
            json.dump(spec.model_dump(mode="json", exclude_defaults=True), file, indent=2)
        os.replace(temporary, self._file(spec.name))

    def delete(self, name: str) -> bool:
        try:
            self._file(name).unlink()
        except FileNotFoundError:
            return False
        return True
