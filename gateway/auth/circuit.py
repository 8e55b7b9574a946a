"""A circuit breaker in front of Redis: after a failure, requests skip Redis for a while instead of each
paying the deadline again.

Without it, a stalled Redis (SIGSTOP, a full network buffer) costs every request the whole deadline of
every Redis call it makes: with fail_open, ~100 req/s became ~1.5. With it, the first call that fails
opens the circuit; from then on calls fail at once (the access layer then answers as its failure mode
says) while one background probe pings Redis every `retry_s`; the first answer closes the circuit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

logger = logging.getLogger("tandem.auth")


@dataclass(slots=True)
class CircuitStats:
    """What the breaker did, for logs and tests: calls that went to Redis and failed, calls it skipped."""

    failures: int = 0  # calls that reached Redis and failed (each paid up to the deadline)
    skipped: int = 0  # calls refused at once while the circuit was open
    opened: int = 0
    closed: int = 0


class CircuitOpenError(Exception):
    """Redis is not asked: it failed recently and the background probe has not seen it answer since."""


class CircuitBreaker:
    def __init__(self, probe: Callable[[], Awaitable[None]], retry_s: float, description: str) -> None:
        self._probe = probe  # one cheap call to Redis (PING) that raises when it does not answer
        self._retry_s = retry_s
        self._description = description
        self._prober: asyncio.Task[None] | None = None
        self.stats = CircuitStats()

    @property
    def is_open(self) -> bool:
        return self._prober is not None and not self._prober.done()

    def check(self) -> None:
        """Before a call: raises CircuitOpenError while the circuit is open."""
        if self.is_open:
            self.stats.skipped += 1
            raise CircuitOpenError(f"{self._description}: not asked, it failed less than a probe ago")

    def failed(self) -> None:
        """After a call that reached Redis and failed: open the circuit, start probing."""
        self.stats.failures += 1
        if self.is_open:
            return
        self.stats.opened += 1
        logger.warning(
            "%s failed: skipping it, probing every %.1fs until it answers", self._description, self._retry_s
        )
        self._prober = asyncio.get_running_loop().create_task(self._probe_until_it_answers())

    async def _probe_until_it_answers(self) -> None:
        while True:
            await asyncio.sleep(self._retry_s)
            try:
                await self._probe()
            except Exception as exc:  # still down: keep the circuit open
                logger.debug("%s still unreachable: %s", self._description, exc)
                continue
            self.stats.closed += 1
            logger.warning("%s answers again: requests use it again", self._description)
            return

    async def aclose(self) -> None:
        if self._prober is not None and not self._prober.done():
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
