"""The circuit breaker in front of Redis: a stalled Redis (SIGSTOP) costs the first request its deadline, not
every request of the outage, and once Redis answers the background probe closes the circuit and limits
apply again. Against a real redis-server, paused and resumed."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.auth import open_access
from gateway.auth.redis_store import RedisStore
from gateway.errors import APIError
from tests.redis_server import start_redis
from tests.test_auth_support import bearer, create_key, settings_for

REQUESTS = 20


@pytest.fixture
def stalled_redis(tmp_path):
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


async def _until(condition, timeout_s: float = 20.0) -> None:
    """Waits for the background probe (this bounds a hang, it is not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the circuit did not close after Redis came back"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_a_stalled_redis_costs_one_deadline_not_one_per_request(stalled_redis, mode, caplog):
    settings = settings_for("redis", stalled_redis, redis_failure_mode=mode, redis_retry_s=0.2)

    async def main():
        access = await open_access(settings)
        store = access.store
        assert isinstance(store, RedisStore)
        try:
            created = await create_key(access, rpm=1000)
            key = await access.authenticate(bearer(created.key), None)
            assert (await access.admit(key, "tiny", 1)).headers  # Redis counted it: rate-limit headers
            stalled_redis.pause()
            outcomes = []
            with caplog.at_level(logging.WARNING, logger="tandem.auth"):
                for _ in range(REQUESTS):
                    try:
                        principal = await access.authenticate(bearer(created.key), None)
                        admission = await access.admit(principal, "tiny", 1)
                        await admission.settle(1, 1)
                        outcomes.append(("served", admission.headers))
                    except APIError as exc:
                        outcomes.append((exc.status, exc.body.code))
                # one call waited for the stalled Redis and failed; every later one skipped it at once
                assert store.circuit.stats.failures == 1, store.circuit.stats
                assert store.circuit.stats.skipped >= REQUESTS - 1, store.circuit.stats
                assert store.circuit.is_open
                if mode == "fail_open":  # served without limits, from the key this replica verified
                    assert outcomes == [("served", {})] * REQUESTS
                else:
                    assert outcomes == [(503, "access_store_unavailable")] * REQUESTS
                stalled_redis.resume()
                await _until(lambda: not store.circuit.is_open)
            assert store.circuit.stats.closed == 1
            assert "answers again" in caplog.text
            admission = await access.admit(await access.authenticate(bearer(created.key), None), "tiny", 1)
            assert admission.headers["x-ratelimit-limit-requests"] == "1000"  # limits apply again
            await admission.settle(1, 1)
            assert store.circuit.stats.failures == 1
        finally:
            stalled_redis.resume()
            await access.aclose()

    asyncio.run(main())
