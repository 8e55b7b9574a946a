"""A backend's lifecycle state, shared by its worker thread (which may fail it) and the event loop."""

from __future__ import annotations

import threading

from backends.base import BackendHealth, BackendState, BackendUnavailableError


class Lifecycle:
    """READY -> FAILED (an error no single request can be blamed for) or CLOSED; both are final.

    Thread-safe. The backend checks `refusal()` under its own admission lock and fails *before* it drains
    its queues, so a request is either refused or drained with the rest, never left waiting.
    """

    def __init__(self, model_name: str) -> None:
        self._model_name = model_name
        self._lock = threading.Lock()
        self._health = BackendHealth(BackendState.READY)

    @property
    def health(self) -> BackendHealth:
        return self._health

    def fail(self, error: str) -> bool:
        """Mark the backend failed; returns whether this call did (only a READY backend can fail)."""
        with self._lock:
            if self._health.state is not BackendState.READY:
                return False
            self._health = BackendHealth(BackendState.FAILED, error)
            return True

    def close(self) -> None:
        with self._lock:
            if self._health.state is BackendState.READY:
                self._health = BackendHealth(BackendState.CLOSED)

    def refusal(self) -> BackendUnavailableError | None:
        """The error a new request gets now, or None while the backend is ready."""
        health = self._health
        if health.state is BackendState.FAILED:
            return BackendUnavailableError(
                f"model {self._model_name!r} failed ({health.error}); it is being reloaded, retry shortly"
            )
        if health.state is BackendState.CLOSED:
            return BackendUnavailableError(f"model {self._model_name!r} is shutting down")
        return None
