"""API keys on both stores: format, hash-only storage, constant-time checks, revoke, expiry, model globs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from gateway.auth import AuthSettings, open_access
from gateway.auth.keys import KEY_PREFIX, key_id_of, parse_key, presented_token
from gateway.errors import APIError
from tests.redis_server import running_redis
from tests.test_auth_support import MASTER, STORES, bearer, create_key, settings_for


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    yield from running_redis(tmp_path_factory)


@pytest.fixture(params=STORES)
def settings(request, redis_server) -> AuthSettings:
    return settings_for(request.param, redis_server)


def _refused(exc: pytest.ExceptionInfo[APIError], status: int, code: str) -> str:
    assert exc.value.status == status
    assert exc.value.body.code == code
    return exc.value.body.message


def test_key_format_round_trips():
    assert parse_key("sk-tandem-0123456789ab-se-cr_et") is not None
    parsed = parse_key("sk-tandem-0123456789ab-se-cr_et")
    assert (parsed.key_id, parsed.secret) == ("0123456789ab", "se-cr_et")
    for bad in ("sk-tandem-0123456789ab", "sk-tandem-XYZ-abc", "sk-other-0123456789ab-x", ""):
        assert parse_key(bad) is None
    assert key_id_of("0123456789ab") == key_id_of("sk-tandem-0123456789ab") == "0123456789ab"
    assert key_id_of("sk-tandem-0123456789ab-secret") == "0123456789ab"
    assert presented_token("Bearer abc", None) == "abc"
    assert presented_token("bearer  abc ", "other") == "abc"
    assert presented_token(None, "xyz") == "xyz"
    assert presented_token("Basic abc", None) is None


def test_keys_authenticate_list_and_revoke(settings):
    async def main():
        access = await open_access(settings)
        try:
            created = await create_key(access, "alice", team="ml", models=["tiny*"], rpm=5)
            assert created.key.startswith(f"{KEY_PREFIX}{created.id}-")
            by_bearer = await access.authenticate(bearer(created.key), None)
            by_header = await access.authenticate(None, created.key)
            assert by_bearer == by_header
            assert (by_bearer.key_id, by_bearer.team, by_bearer.is_master) == (created.id, "ml", False)
            assert by_bearer.models == ("tiny*",) and by_bearer.limits.rpm == 5

            listed = await access.admin.list_keys()
            assert [k.id for k in listed] == [created.id]
            secret = parse_key(created.key).secret
            assert secret not in listed[0].model_dump_json()
            assert listed[0].prefix == f"{KEY_PREFIX}{created.id}" and listed[0].status == "active"

            revoked = await access.admin.revoke_key(created.key)  # by the whole key; by id works too
            assert revoked.status == "revoked"
            with pytest.raises(APIError) as exc:
                await access.authenticate(bearer(created.key), None)
            assert "revoked" in _refused(exc, 401, "invalid_api_key")
            assert (await access.admin.list_keys())[0].status == "revoked"
        finally:
            await access.aclose()

    asyncio.run(main())


def test_bad_keys_are_refused_without_echoing_them(settings):
    async def main():
        access = await open_access(settings)
        try:
            created = await create_key(access)
            wrong_secret = f"{KEY_PREFIX}{created.id}-not-the-secret"
            for authorization, api_key in [
                (None, None),
                ("Bearer garbage", None),
                (bearer(wrong_secret), None),
                (bearer(f"{KEY_PREFIX}aaaaaaaaaaaa-secret"), None),
            ]:
                with pytest.raises(APIError) as exc:
                    await access.authenticate(authorization, api_key)
                message = _refused(exc, 401, "invalid_api_key")
                assert exc.value.body.type == "invalid_request_error"
                assert "not-the-secret" not in message and "garbage" not in message
            master = await access.authenticate(bearer(MASTER), None)
            assert master.is_master and master.key_id is None
        finally:
            await access.aclose()

    asyncio.run(main())


def test_expired_key_is_refused(settings):
    async def main():
        access = await open_access(settings)
        try:
            created = await create_key(access, expires_in="30d")
            assert created.expires_at is not None
            assert timedelta(days=29) < created.expires_at - datetime.now(UTC) <= timedelta(days=30)
            await access.authenticate(bearer(created.key), None)
            record = await access.store.get_key(created.id)
            await access.store.put_key(record.model_copy(update={"expires_at": datetime.now(UTC)}))
            with pytest.raises(APIError) as exc:
                await access.authenticate(bearer(created.key), None)
            assert "expired" in _refused(exc, 401, "invalid_api_key")
            assert (await access.admin.get_key(created.id)).status == "expired"
        finally:
            await access.aclose()

    asyncio.run(main())


def test_secrets_are_compared_in_constant_time(settings, monkeypatch):
    calls: list[tuple[object, object]] = []
    original = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    async def main():
        access = await open_access(settings)
        try:
            created = await create_key(access)
            calls.clear()
            await access.authenticate(bearer(created.key), None)
            digest = hashlib.sha256(parse_key(created.key).secret.encode()).hexdigest()
            assert (digest, digest) in calls  # the key's secret, by its sha256
            assert len(calls) == 2  # and the master key, checked first
        finally:
            await access.aclose()

    asyncio.run(main())


def test_only_the_hash_is_stored_in_redis(redis_server):
    settings = settings_for("redis", redis_server)

    async def main():
        from redis.asyncio import Redis

        access = await open_access(settings)
        client = Redis.from_url(redis_server.url, decode_responses=True)
        try:
            created = await create_key(access, "bob", team="ml", rpm=5, tpm=1000, max_parallel=2)
            principal = await access.authenticate(bearer(created.key), None)
            admission = await access.admit(principal, "tiny", 10)
            await admission.settle(3, 4)
            stored: list[str] = []
            async for name in client.scan_iter(f"{settings.redis_prefix}*"):
                stored.append(name)
                kind = await client.type(name)
                if kind == "string":
                    stored.append(await client.get(name))
                elif kind == "hash":
                    stored += [f"{k}={v}" for k, v in (await client.hgetall(name)).items()]
                elif kind == "set":
                    stored += list(await client.smembers(name))
                elif kind == "zset":
                    stored += list(await client.zrange(name, 0, -1))
            everything = "\n".join(stored)
            secret = parse_key(created.key).secret
            assert secret not in everything and created.key not in everything
            assert hashlib.sha256(secret.encode()).hexdigest() in everything
            prefix = settings.redis_prefix
            assert {f"{prefix}key:{created.id}", f"{prefix}keys", f"{prefix}rl:key:{created.id}:rpm"} <= set(
                stored
            )
        finally:
            await client.aclose()
            await access.aclose()

    asyncio.run(main())


def test_model_globs_restrict_a_key(settings):
    async def main():
        access = await open_access(settings)
        try:
            created = await create_key(access, models=["qwen*", "tiny"])
            key = await access.authenticate(bearer(created.key), None)
            assert access.may_use(key, "qwen2.5-0.5b")
            assert access.may_use(key, "tiny")
            assert not access.may_use(key, "llama-3")
            assert access.may_use(key, "some-file-name", "tiny")  # allowed through an alias
            everything = await access.authenticate(bearer((await create_key(access)).key), None)
            assert access.may_use(everything, "llama-3")
            assert access.may_use(await access.authenticate(None, MASTER), "llama-3")
        finally:
            await access.aclose()

    asyncio.run(main())


def test_access_off_without_a_master_key_still_records_usage():
    async def main():
        access = await open_access(AuthSettings())
        try:
            assert not access.enabled
            anyone = await access.authenticate(None, None)
            assert access.may_use(anyone, "anything")
            admission = await access.admit(anyone, "tiny", 10**9)
            assert admission.headers == {}
            await admission.settle(7, 5)
            await admission.settle(7, 5)  # idempotent
            rows = (await access.admin.usage(None, None, None, None)).data
            assert [(r.key_id, r.model, r.requests, r.total_tokens) for r in rows] == [
                ("anonymous", "tiny", 1, 12)
            ]
        finally:
            await access.aclose()

    asyncio.run(main())


def test_settings_refuse_unknown_fields():
    with pytest.raises(ValueError):
        AuthSettings.model_validate({"master_key": "x", "redis_uri": "redis://"})
    with pytest.raises(ValueError):
        AuthSettings(redis_url="localhost:6379")
    assert AuthSettings(master_key=SecretStr("x")).redis_failure_mode == "fail_closed"
    assert AuthSettings.model_validate({"master_key": ""}).master_key is None
