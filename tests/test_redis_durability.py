"""Keys and teams live in Redis: a Redis restart must not delete them (it did: the shipped deployments ran
Redis with `--save "" --appendonly no`, and every key answered 401 afterwards).

The restart test runs a real redis-server with exactly the arguments docker-compose.yml and
deploy/k8s/redis.yaml ship, restarts it on the same directory, and checks that a key created through a
running tandem still authenticates. The same test with the old arguments shows what it catches.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from gateway.auth import open_access
from gateway.errors import APIError
from tests.conftest import model_entry, start_server
from tests.deploy_support import K8S_DIR, ROOT, k8s_object, load_yaml
from tests.redis_server import NO_PERSISTENCE, start_redis
from tests.test_auth_support import bearer, create_key, settings_for

MASTER = "sk-durable-master"


def _without_dir(args: list[str]) -> tuple[str, ...]:
    """redis-server's arguments minus `--dir PATH` (the test's server keeps its data in its own dir)."""
    i = args.index("--dir")
    return tuple(args[:i] + args[i + 2 :])


def _compose_redis() -> dict:
    return load_yaml(ROOT / "docker-compose.yml")["services"]["redis"]


def _k8s_redis_container() -> dict:
    (container,) = k8s_object("Deployment", "tandem-redis")["spec"]["template"]["spec"]["containers"]
    return container


def shipped_redis_args() -> tuple[str, ...]:
    command = _compose_redis()["command"]
    assert command[0] == "redis-server"
    return _without_dir(command[1:])


def test_both_deployments_run_redis_persistent_on_a_volume():
    compose_args = _compose_redis()["command"]
    k8s_args = _k8s_redis_container()["args"]
    assert compose_args == k8s_args, "compose and k8s should run the same Redis"
    options = dict(zip(compose_args[1::2], compose_args[2::2], strict=True))
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"
    data_dir = options["--dir"]

    compose = load_yaml(ROOT / "docker-compose.yml")
    volume, target = next(v.split(":")[:2] for v in _compose_redis()["volumes"])
    assert target == data_dir and volume in compose["volumes"]  # a named volume, not the container's layer

    deployment = k8s_object("Deployment", "tandem-redis")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two pods on one ReadWriteOnce volume
    mount = next(m for m in _k8s_redis_container()["volumeMounts"] if m["mountPath"] == data_dir)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = k8s_object("PersistentVolumeClaim", volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "redis.yaml" in (K8S_DIR / "kustomization.yaml").read_text()


def test_keys_created_through_tandem_survive_a_redis_restart(tiny_llama, tmp_path):
    redis = start_redis(tmp_path / "redis", persistence=shipped_redis_args())
    config = {"profile": "dev", "profiles": {"dev": {"models": [model_entry(tiny_llama, "dev")]}}}
    env = {"TANDEM_MASTER_KEY": MASTER, "TANDEM_REDIS_URL": redis.url}
    server = start_server(config, tmp_path / "tandem", env=env)
    try:
        admin_env = {**os.environ, "TANDEM_MASTER_KEY": MASTER}
        created = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "keys", "create", "--name", "app", "--team", "research",
             "--url", server.base_url],
            capture_output=True, text=True, timeout=60, env=admin_env,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        team = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "teams", "set", "research", "--rpm", "100",
             "--url", server.base_url],
            capture_output=True, text=True, timeout=60, env=admin_env,
        )  # fmt: skip
        assert team.returncode == 0, team.stderr
        headers = {"authorization": f"Bearer {key}"}
        assert httpx.get(f"{server.v1}/models", headers=headers).status_code == 200

        redis.stop()  # SIGTERM, as docker and Kubernetes stop a container
        redis = redis.restarted()

        models = httpx.get(f"{server.v1}/models", headers=headers)
        assert models.status_code == 200, models.text
        master = {"authorization": f"Bearer {MASTER}"}
        limits = httpx.get(f"{server.base_url}/admin/teams/research", headers=master)
        assert limits.status_code == 200 and limits.json()["limits"]["rpm"] == 100, limits.text
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        answered = httpx.post(f"{server.v1}/chat/completions", json=chat, headers=headers, timeout=60)
        assert answered.status_code == 200 and answered.headers["x-ratelimit-limit-requests"] == "100"
    finally:
        server.stop()
        redis.stop()


def test_without_persistence_a_restart_loses_every_key(tmp_path):
    """What the shipped configuration did before: the same restart, and the key is gone."""
    redis = start_redis(tmp_path / "redis", persistence=NO_PERSISTENCE)
    settings = settings_for("redis", redis)

    async def main():
        access = await open_access(settings)
        try:
            created = await create_key(access)
            await access.authenticate(bearer(created.key), None)
            nonlocal redis
            redis.stop()
            redis = redis.restarted()
            with pytest.raises(APIError) as refused:
                await access.authenticate(bearer(created.key), None)
            assert refused.value.status == 401
        finally:
            await access.aclose()

    try:
        asyncio.run(main())
    finally:
        redis.stop()
