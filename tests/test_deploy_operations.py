"""The deployments agree with tandem's operational settings: the time an orchestrator gives a stopping
container covers tandem's drain window (TANDEM_DRAIN_S) plus the time to end streams and unload, and
Prometheus can still scrape /metrics now that access control closes it by default."""

from __future__ import annotations

import re

import pytest

from gateway.settings import Settings
from tests.deploy_support import ROOT, k8s_object, load_yaml

GRACE_OVER_DRAIN_S = 5


def _compose_services() -> dict:
    return load_yaml(ROOT / "docker-compose.yml")["services"]


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return int(match.group(1))


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _k8s_env(deployment: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(deployment)["env"] if "value" in e}


@pytest.mark.parametrize("name", ["tandem-gateway", "tandem-engine-gpu"])
def test_k8s_grace_period_covers_the_drain(name):
    deployment = k8s_object("Deployment", name)
    drain = Settings(drain_s=_k8s_env(deployment).get("TANDEM_DRAIN_S", Settings().drain_s)).drain_s
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == drain + GRACE_OVER_DRAIN_S


@pytest.mark.parametrize("name", ["gateway", "gateway-gpu"])
def test_compose_stop_grace_period_covers_the_drain(name):
    service = _compose_services()[name]
    drain = float(service["environment"].get("TANDEM_DRAIN_S", Settings().drain_s))
    assert _seconds(service["stop_grace_period"]) == drain + GRACE_OVER_DRAIN_S


def test_k8s_prometheus_sends_the_master_key_the_gateways_use():
    (endpoint,) = k8s_object("ServiceMonitor", "tandem")["spec"]["endpoints"]
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer" and credentials["key"] == "TANDEM_MASTER_KEY"
    for name in ("tandem-gateway", "tandem-engine-gpu"):
        sources = _container(k8s_object("Deployment", name))["envFrom"]
        assert {"secretRef": {"name": credentials["name"], "optional": True}} in sources, name


def test_compose_prometheus_scrapes_without_credentials_because_metrics_are_open():
    jobs = load_yaml(ROOT / "config" / "prometheus.yml")["scrape_configs"]
    assert not any("authorization" in job for job in jobs)
    for name in ("gateway", "gateway-gpu"):
        environment = _compose_services()[name]["environment"]
        assert Settings(metrics_open=environment["TANDEM_METRICS_OPEN"]).metrics_open, name
