"""Static checks of docker-compose.yml, the Prometheus config and the Grafana provisioning. Fast and offline;
the `docker-compose` and `promtool` checks skip without the tools (see tests/deploy_support.py)."""

from __future__ import annotations

import re
import subprocess
from functools import cache

from tests.deploy_support import DATASOURCE_UID, ROOT, compose_schema, load_yaml, require_tool, schema_errors

# ---- docker-compose.yml ------------------------------------------------------------------------------------


@cache
def compose() -> dict:
    return load_yaml(ROOT / "docker-compose.yml")


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _bind_mounts(service: dict) -> dict[str, str]:
    """Host path (relative to the repository) -> container path, for ./ bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[source[2:]] = target
    return mounts


def test_compose_validates_against_the_compose_spec():
    assert schema_errors(compose(), compose_schema(), compose_schema()) == []


def test_docker_compose_config_accepts_the_file():
    docker_compose = require_tool("docker-compose")
    for args in ([], ["--profile", "prod"]):
        result = subprocess.run(
            [docker_compose, "-f", "docker-compose.yml", *args, "config", "-q"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr


def test_compose_services_are_wired_together():
    services = compose()["services"]
    assert {"gateway", "gateway-gpu", "redis", "prometheus", "grafana"} <= set(services)
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in ("gateway", "gateway-gpu"):
        service = services[name]
        env = _env(service)
        redis_url = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", env["TANDEM_REDIS_URL"])
        assert redis_url and redis_url.group(1) in services and redis_url.group(2) == "6379"
        assert any(p.endswith(":8000") for p in service["ports"])
        cache_volume = [v for v in service["volumes"] if v.endswith(":/home/tandem/.cache/tandem")]
        assert cache_volume and cache_volume[0].split(":")[0] in compose()["volumes"]
        assert "/home/tandem/.cache/tandem" in dockerfile  # the image's ~/.cache/tandem
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and "/health" in test[-1]
        compile(test[-1], "healthcheck", "exec")
    gateway, gpu = services["gateway"], services["gateway-gpu"]
    assert gateway["build"] == "." and _env(gateway)["TANDEM_PROFILE"] == "dev"
    assert "profiles" not in gateway
    assert gpu["profiles"] == ["prod"] and _env(gpu)["TANDEM_PROFILE"] == "prod"
    assert gpu["build"] == {"context": ".", "dockerfile": "Dockerfile.cuda"}
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["redis"]["image"] == "redis:7-alpine"

    for name in ("prometheus", "grafana"):
        for host_path in _bind_mounts(services[name]):
            assert (ROOT / host_path).exists(), f"{name} mounts ./{host_path}, which does not exist"
    prometheus_mounts = _bind_mounts(services["prometheus"])
    assert prometheus_mounts["config/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    grafana = services["grafana"]
    assert _env(grafana)["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert _env(grafana)["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "3000:3000" in grafana["ports"]
    grafana_mounts = _bind_mounts(grafana)
    assert grafana_mounts["config/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{grafana_mounts['config/grafana/dashboards']}/overview.json"


# ---- Prometheus and Grafana provisioning -------------------------------------------------------------------


def test_prometheus_config_scrapes_the_gateway():
    config = load_yaml(ROOT / "config" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    tandem = jobs["tandem"]
    assert tandem.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for group in tandem["static_configs"] for t in group["targets"]]
    assert targets == ["gateway:8000"]
    services = compose()["services"]
    host, port = targets[0].split(":")
    assert host in services and any(p.endswith(f":{port}") for p in services[host]["ports"])
    for job in jobs.values():
        for sd in job.get("dns_sd_configs", []):
            assert all(name in services for name in sd["names"]), "scrapes a service compose does not define"


def test_promtool_accepts_the_prometheus_config():
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(ROOT / "config" / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards():
    provisioning = ROOT / "config" / "grafana" / "provisioning"
    datasources = load_yaml(provisioning / "datasources" / "prometheus.yml")
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose()["services"]
    providers = load_yaml(provisioning / "dashboards" / "tandem.yml")
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    mounts = _bind_mounts(compose()["services"]["grafana"])
    assert provider["options"]["path"] == mounts["config/grafana/dashboards"]


def test_make_install_installs_the_tools_these_tests_need():
    makefile = (ROOT / "Makefile").read_text()
    line = next(line for line in makefile.splitlines() if line.startswith("SYSTEM_PACKAGES :="))
    provides = dict(entry.split(":") for entry in line.split(":=", 1)[1].split())
    assert provides == {"redis-server": "redis-server", "prometheus": "promtool", "chromium": "chromium",
                        "docker-compose": "docker-compose"}  # fmt: skip
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")
