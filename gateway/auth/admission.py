"""One admitted request: its x-ratelimit-* headers and the settle step that ends it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class Admission:
    """Returned by Access.admit. Call settle exactly when the request ends, in a finally."""

    def __init__(
        self,
        headers: dict[str, str],
        settle: Callable[[int, int], Coroutine[Any, Any, None]],
        background: set[asyncio.Task[None]],
    ) -> None:
        self.headers = headers
        self._settle = settle
        self._background = background
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    async def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Charge the real token count instead of the reservation, record usage, free the parallel slot.

        Idempotent. Never raises for store trouble (it logs). Runs to completion even when the calling
        task is cancelled (a client disconnect): the work is shielded, so a slot is never left taken.
        """
        if self._settled:
            return
        self._settled = True
        task = asyncio.get_running_loop().create_task(
            self._settle(max(0, prompt_tokens), max(0, completion_tokens))
        )
        # the Access keeps the task alive (and awaits it on close) if our caller is cancelled meanwhile
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.shield(task)
