"""Redis-only promises: two replicas share one set of limits and keys; Redis down or stalled never hangs a
request, and redis_failure_mode decides between 503 and serving without limits."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.auth import open_access
from gateway.auth.store import StoreUnavailableError
from gateway.errors import APIError
from tests.redis_server import RedisServer, running_redis, start_redis
from tests.test_auth_support import bearer, create_key, settings_for

QUICK_S = 2.0


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    yield from running_redis(tmp_path_factory)


@pytest.fixture
def doomed_redis(tmp_path):
    """A server of the test's own, to stop or stall."""
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


def test_two_replicas_admit_exactly_the_limit_under_concurrency(redis_server):
    settings = settings_for("redis", redis_server)

    async def main():
        replicas = [await open_access(settings), await open_access(settings)]
        try:
            created = await create_key(replicas[0], rpm=20)
            principals = [await replica.authenticate(bearer(created.key), None) for replica in replicas]

            async def attempt(i: int) -> bool:
                try:
                    await replicas[i % 2].admit(principals[i % 2], "tiny", 1)
                    return True
                except APIError as exc:
                    assert exc.status == 429
                    return False

            results = await asyncio.gather(*(attempt(i) for i in range(50)))
            assert sum(results) == 20
            assert {sum(results[0::2]), sum(results[1::2])} != {0}  # both replicas admitted some
        finally:
            for replica in replicas:
                await replica.aclose()

    asyncio.run(main())


def test_a_revoke_on_one_replica_is_refused_at_once_on_the_other(redis_server):
    settings = settings_for("redis", redis_server)

    async def main():
        first, second = await open_access(settings), await open_access(settings)
        try:
            created = await create_key(first)
            await second.authenticate(bearer(created.key), None)  # known to the second replica
            await first.admin.revoke_key(created.id)
            with pytest.raises(APIError) as exc:
                await second.authenticate(bearer(created.key), None)
            assert exc.value.status == 401 and "revoked" in exc.value.body.message
        finally:
            await first.aclose()
            await second.aclose()

    asyncio.run(main())


def test_parallel_slots_are_shared_by_replicas(redis_server):
    settings = settings_for("redis", redis_server)

    async def main():
        first, second = await open_access(settings), await open_access(settings)
        try:
            created = await create_key(first, max_parallel=1)
            key = await first.authenticate(bearer(created.key), None)
            running = await first.admit(key, "tiny", 1)
            with pytest.raises(APIError):
                await second.admit(key, "tiny", 1)
            await running.settle(1, 1)
            await (await second.admit(key, "tiny", 1)).settle(1, 1)
        finally:
            await first.aclose()
            await second.aclose()

    asyncio.run(main())


async def _timed(call) -> tuple[float, object]:
    started = time.monotonic()
    try:
        result: object = await call
    except APIError as exc:
        result = exc
    return time.monotonic() - started, result


def _is_store_unavailable(result: object) -> bool:
    return (
        isinstance(result, APIError)
        and result.status == 503
        and result.body.code == "access_store_unavailable"
    )


@pytest.mark.parametrize("failure", ["stopped", "stalled"])
def test_fail_closed_answers_503_quickly(doomed_redis: RedisServer, failure: str):
    settings = settings_for("redis", doomed_redis)

    async def main():
        access = await open_access(settings)
        try:
            created = await create_key(access, rpm=100)
            key = await access.authenticate(bearer(created.key), None)
            doomed_redis.stop() if failure == "stopped" else doomed_redis.pause()
            for call in (access.authenticate(bearer(created.key), None), access.admit(key, "tiny", 1)):
                elapsed, result = await _timed(call)
                assert _is_store_unavailable(result), result
                assert result.body.type == "server_error" and result.headers["Retry-After"] == "1"
                assert elapsed < QUICK_S
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):  # the admin API answers it with the same 503
                await access.admin.list_keys()
            assert time.monotonic() - started < QUICK_S
            master = await access.authenticate(None, settings.master_key.get_secret_value())
            admission = await access.admit(master, "tiny", 1)  # the master key needs no store
            elapsed, _ = await _timed(admission.settle(1, 1))  # usage lost, logged, never raised
            assert elapsed < QUICK_S
        finally:
            doomed_redis.resume()
            await access.aclose()

    asyncio.run(main())


def test_fail_open_serves_with_a_warning(doomed_redis: RedisServer, caplog):
    settings = settings_for("redis", doomed_redis, redis_failure_mode="fail_open")

    async def main():
        access = await open_access(settings)
        try:
            known = await create_key(access, rpm=1)
            stranger = await create_key(access, rpm=1)
            key = await access.authenticate(bearer(known.key), None)
            await access.admit(key, "tiny", 1)
            doomed_redis.stop()
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="tandem.auth"):
                elapsed, result = await _timed(access.admit(key, "tiny", 1))  # over its rpm: not counted now
                assert elapsed < QUICK_S and not isinstance(result, APIError)
                assert result.headers == {}
                await result.settle(1, 1)
                # a key this replica verified recently keeps working; one it never saw cannot be checked
                assert (await access.authenticate(bearer(known.key), None)).key_id == known.id
                elapsed, refused = await _timed(access.authenticate(bearer(stranger.key), None))
                assert _is_store_unavailable(refused) and elapsed < QUICK_S
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any("fail_open" in message for message in warnings), warnings
        finally:
            await access.aclose()

    asyncio.run(main())


def test_start_with_redis_down_does_not_crash(doomed_redis: RedisServer, caplog):
    settings = settings_for("redis", doomed_redis)
    doomed_redis.stop()

    async def main():
        with caplog.at_level(logging.INFO, logger="tandem.auth"):
            started = time.monotonic()
            access = await open_access(settings)
            assert time.monotonic() - started < QUICK_S
        try:
            assert "not reachable at start" in caplog.text
            assert "Redis at redis://127.0.0.1" in caplog.text
        finally:
            await access.aclose()

    asyncio.run(main())


def test_the_redis_password_is_not_logged(caplog):
    settings = settings_for("memory", None, redis_url="redis://:hunter2@127.0.0.1:1/0", redis_timeout_s=0.2)

    async def main():
        with caplog.at_level(logging.INFO, logger="tandem.auth"):
            access = await open_access(settings)
        await access.aclose()

    asyncio.run(main())
    assert "hunter2" not in caplog.text and ":***@127.0.0.1:1" in caplog.text
