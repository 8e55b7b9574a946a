"""Every limit on both stores: refuses at the right count, with OpenAI's 429 body, headers and Retry-After;
settle reconciles tokens and frees parallel slots; team limits are shared; a refusal reserves nothing."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from gateway.auth import AuthSettings, Limits, open_access
from gateway.auth.limiter import format_reset
from gateway.errors import APIError
from tests.redis_server import running_redis
from tests.test_auth_support import MASTER, STORES, bearer, create_key, settings_for

RESET = re.compile(r"^(\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    yield from running_redis(tmp_path_factory)


@pytest.fixture(params=STORES)
def settings(request, redis_server) -> AuthSettings:
    return settings_for(request.param, redis_server)


def _rate_limited(exc: pytest.ExceptionInfo[APIError], kind: str) -> APIError:
    error = exc.value
    assert error.status == 429
    assert (error.body.type, error.body.code, error.body.param) == (kind, "rate_limit_exceeded", None)
    return error


def test_format_reset_is_openais():
    assert [format_reset(ms) for ms in (0, 17, 1000, 8640, 60_000, 360_000, 3_723_000)] == [
        "0s", "17ms", "1s", "8.64s", "1m0s", "6m0s", "1h2m3s",
    ]  # fmt: skip


def test_rpm_refuses_the_request_over_the_limit(settings):
    async def main():
        access = await open_access(settings)
        try:
            key = await access.authenticate(bearer((await create_key(access, rpm=3)).key), None)
            remaining = []
            for _ in range(3):
                admission = await access.admit(key, "tiny", 10)
                assert admission.headers["x-ratelimit-limit-requests"] == "3"
                assert RESET.match(admission.headers["x-ratelimit-reset-requests"])
                remaining.append(admission.headers["x-ratelimit-remaining-requests"])
                await admission.settle(1, 1)
            assert remaining == ["2", "1", "0"]
            with pytest.raises(APIError) as exc:
                await access.admit(key, "tiny", 10)
            error = _rate_limited(exc, "requests")
            assert "requests per min (RPM)" in error.body.message and "Limit 3" in error.body.message
            assert 19 <= int(error.headers["Retry-After"]) <= 20  # one request refills in 60 s / 3
            assert error.headers["x-ratelimit-remaining-requests"] == "0"
            assert re.match(r"^(59(\.\d+)?s|1m0s)$", error.headers["x-ratelimit-reset-requests"])
            assert "x-ratelimit-limit-tokens" not in error.headers  # no tpm limit on this key
        finally:
            await access.aclose()

    asyncio.run(main())


def test_tpm_reserves_then_settle_reconciles(settings):
    async def main():
        access = await open_access(settings)
        try:
            key = await access.authenticate(bearer((await create_key(access, tpm=100)).key), None)
            first = await access.admit(key, "tiny", 60)  # prompt + max_tokens
            assert first.headers["x-ratelimit-limit-tokens"] == "100"
            assert first.headers["x-ratelimit-remaining-tokens"] == "40"
            with pytest.raises(APIError) as exc:
                await access.admit(key, "tiny", 60)
            error = _rate_limited(exc, "tokens")
            assert "tokens per min (TPM)" in error.body.message and "Requested 60" in error.body.message
            assert 12 <= int(error.headers["Retry-After"]) <= 13  # 20 tokens at 100 per minute
            await first.settle(4, 6)  # used 10 of the 60: 50 come back
            second = await access.admit(key, "tiny", 60)
            assert 30 <= int(second.headers["x-ratelimit-remaining-tokens"]) <= 32
            with pytest.raises(APIError) as exc:
                await access.admit(key, "tiny", 101)  # can never fit: no Retry-After
            assert "Request too large" in _rate_limited(exc, "tokens").body.message
            assert "Retry-After" not in exc.value.headers
        finally:
            await access.aclose()

    asyncio.run(main())


def test_budget_per_period(settings):
    async def main():
        access = await open_access(settings)
        try:
            key = await access.authenticate(
                bearer((await create_key(access, budget_tokens=100, budget_period="1d")).key), None
            )
            first = await access.admit(key, "tiny", 60)
            with pytest.raises(APIError) as exc:
                await access.admit(key, "tiny", 60)
            error = _rate_limited(exc, "tokens")
            assert "tokens per 1d (budget)" in error.body.message
            assert 0 < int(error.headers["Retry-After"]) <= 86400  # until the next UTC midnight
            await first.settle(10, 20)  # 30 of the 60 reserved
            await access.admit(key, "tiny", 60)  # 30 + 60 <= 100
            with pytest.raises(APIError):
                await access.admit(key, "tiny", 20)
        finally:
            await access.aclose()

    asyncio.run(main())


def test_budget_starts_over_in_the_next_period(settings):
    async def main():
        access = await open_access(settings)
        try:
            key = await access.authenticate(
                bearer((await create_key(access, budget_tokens=10, budget_period="1s")).key), None
            )
            await asyncio.sleep(1.02 - time.time() % 1)  # periods align to whole seconds: start one
            await access.admit(key, "tiny", 10)
            with pytest.raises(APIError) as exc:
                await access.admit(key, "tiny", 1)
            assert _rate_limited(exc, "tokens").headers["Retry-After"] == "1"
            await asyncio.sleep(1.05)
            await access.admit(key, "tiny", 10)
        finally:
            await access.aclose()

    asyncio.run(main())


def test_parallel_slots_are_released_by_settle(settings):
    async def main():
        access = await open_access(settings)
        try:
            key = await access.authenticate(bearer((await create_key(access, max_parallel=2)).key), None)
            running = [await access.admit(key, "tiny", 1) for _ in range(2)]
            with pytest.raises(APIError) as exc:
                await access.admit(key, "tiny", 1)
            error = _rate_limited(exc, "requests")
            assert "parallel" in error.body.message and error.headers["Retry-After"] == "1"
            await running[0].settle(1, 1)
            await running[0].settle(1, 1)  # idempotent: frees one slot, not two
            running[0] = await access.admit(key, "tiny", 1)
            with pytest.raises(APIError):
                await access.admit(key, "tiny", 1)
        finally:
            await access.aclose()

    asyncio.run(main())


def test_settle_frees_the_slot_even_when_the_request_is_cancelled(settings):
    async def main():
        access = await open_access(settings)
        try:
            key = await access.authenticate(bearer((await create_key(access, max_parallel=1)).key), None)

            async def request() -> None:
                admission = await access.admit(key, "tiny", 1)
                try:
                    await asyncio.sleep(10)  # generating, when the client goes away
                finally:
                    await admission.settle(1, 0)

            task = asyncio.create_task(request())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.1)
            await access.admit(key, "tiny", 1)
        finally:
            await access.aclose()

    asyncio.run(main())


def test_team_limits_are_shared_by_its_keys(settings):
    async def main():
        rejections: list[tuple[str, str]] = []
        access = await open_access(settings, on_rejected=lambda team, limit: rejections.append((team, limit)))
        try:
            await access.admin.set_team("ml", Limits(rpm=3))
            assert (await access.admin.get_team("ml")).limits.rpm == 3
            one = await access.authenticate(bearer((await create_key(access, "one", team="ml")).key), None)
            two = await access.authenticate(bearer((await create_key(access, "two", team="ml")).key), None)
            other = await access.authenticate(bearer((await create_key(access, "x", team="web")).key), None)
            await access.admit(one, "tiny", 1)
            await access.admit(one, "tiny", 1)
            assert (await access.admit(two, "tiny", 1)).headers["x-ratelimit-remaining-requests"] == "0"
            with pytest.raises(APIError) as exc:
                await access.admit(two, "tiny", 1)
            assert "team ml" in _rate_limited(exc, "requests").body.message
            await access.admit(other, "tiny", 1)  # another team: not affected
            assert rejections == [("ml", "rpm")]
        finally:
            await access.aclose()

    asyncio.run(main())


def test_a_refusal_reserves_nothing(settings):
    async def main():
        access = await open_access(settings)
        try:
            await access.admin.set_team("ml", Limits(tpm=100))
            key = await access.authenticate(bearer((await create_key(access, team="ml", rpm=5)).key), None)
            await access.admit(key, "tiny", 80)
            for _ in range(3):  # the team's tpm refuses; the key's rpm must not be charged
                with pytest.raises(APIError) as exc:
                    await access.admit(key, "tiny", 50)
                error = _rate_limited(exc, "tokens")
                assert error.headers["x-ratelimit-remaining-requests"] == "4"
            admitted = await access.admit(key, "tiny", 10)
            assert admitted.headers["x-ratelimit-remaining-requests"] == "3"
            assert 10 <= int(admitted.headers["x-ratelimit-remaining-tokens"]) <= 13  # + refill meanwhile
        finally:
            await access.aclose()

    asyncio.run(main())


def test_usage_is_recorded_per_key_team_model_and_day(settings):
    async def main():
        access = await open_access(settings)
        try:
            alice = await create_key(access, "alice", team="ml")
            key = await access.authenticate(bearer(alice.key), None)
            for model, prompt, completion in [("tiny", 5, 7), ("tiny", 1, 2), ("qwen", 10, 0)]:
                await (await access.admit(key, model, 100)).settle(prompt, completion)
            master = await access.authenticate(None, MASTER)
            await (await access.admit(master, "tiny", 1)).settle(1, 1)
            rows = (await access.admin.usage(alice.id, None, None, None)).data
            got = sorted(
                (r.model, r.requests, r.prompt_tokens, r.completion_tokens, r.total_tokens) for r in rows
            )
            assert got == [("qwen", 1, 10, 0, 10), ("tiny", 2, 6, 9, 15)]
            assert {r.team for r in rows} == {"ml"}
            by_team = (await access.admin.usage(None, "ml", None, None)).data
            assert {r.key_id for r in by_team} == {alice.id}
            everyone = (await access.admin.usage(None, None, None, None)).data
            assert {r.key_id for r in everyone} == {alice.id, "master"}
            today = rows[0].date
            assert (await access.admin.usage(alice.id, None, today, today)).data == rows
        finally:
            await access.aclose()

    asyncio.run(main())


def test_master_and_unlimited_keys_are_not_limited(settings):
    async def main():
        access = await open_access(settings)
        try:
            unlimited = await access.authenticate(bearer((await create_key(access)).key), None)
            master = await access.authenticate(None, MASTER)
            started = time.monotonic()
            for principal in (unlimited, master):
                admission = await access.admit(principal, "tiny", 10**9)
                assert admission.headers == {}
                await admission.settle(1, 1)
            assert time.monotonic() - started < 1
        finally:
            await access.aclose()

    asyncio.run(main())
