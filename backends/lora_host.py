"""What a backend that serves LoRA adapters offers the gateway (torch-free, like backends/base.py).

A capability the backend has or lacks, checked on the loaded backend: a backend without these methods
(remote upstreams) has an adapter model refused with a clear error, never served by the base model alone.
Implemented by PagedBackend (PEFT; backends/paged/lora.py says what each raises: BackendError subclasses,
which the gateway answers with 400) and LlamaCppBackend (GGUF LoRA; backends/llamacpp/adapters.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class AdapterHost(Protocol):
    def add_adapter(self, name: str, path: Path, scale: float = 1.0) -> None:
        """Load the adapter's files and serve it as `name` (blocking: call it in a worker thread)."""
        ...

    def remove_adapter(self, name: str) -> None:
        """Stop serving `name` (running requests on it may finish)."""
        ...

    def adapters(self) -> list[str]:
        """The names of the adapters loaded now."""
        ...
