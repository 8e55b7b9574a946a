"""Static checks of the Kubernetes manifests in deploy/k8s: their schemas and how they fit together. Fast and
offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy_support import K8S_DIR, k8s_docs, k8s_errors, k8s_files, k8s_object


@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: p.name)
def test_k8s_manifest_validates_against_its_kind_schema(path):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    for doc in docs:
        assert k8s_errors(doc) == [], f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"


def test_kustomization_lists_every_manifest_but_the_service_monitor():
    text = (K8S_DIR / "kustomization.yaml").read_text()
    kustomization = yaml.safe_load(text)
    assert k8s_errors(kustomization) == []
    resources = kustomization["resources"]
    assert all((K8S_DIR / r).is_file() for r in resources), resources
    assert sorted(resources) == sorted(p.name for p in k8s_files() if p.name != "servicemonitor.yaml")
    assert "servicemonitor.yaml" in text and "CRD" in text, "the kustomization must say why it is left out"
    assert kustomization["namespace"] == k8s_docs("Namespace")[0]["metadata"]["name"]
    images = {
        c["image"].split(":")[0]
        for d in k8s_docs("Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["image"].startswith("tandem")
    }
    assert images == {i["name"] for i in kustomization["images"]}
    monitor = k8s_docs("ServiceMonitor")
    assert len(monitor) == 1 and monitor[0]["apiVersion"] == "monitoring.coreos.com/v1"


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_k8s_objects_reference_each_other():
    deployments = k8s_docs("Deployment")
    for deployment in deployments:
        template = deployment["spec"]["template"]
        assert _selects(deployment["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
        configmaps = {d["metadata"]["name"] for d in k8s_docs("ConfigMap")}
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
        for container in template["spec"]["containers"]:
            assert container["resources"].get("requests") and container["resources"].get("limits")
            assert container.get("readinessProbe") and container.get("livenessProbe"), container["name"]
    for service in k8s_docs("Service"):
        selected = [
            d
            for d in deployments
            if _selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, (
            f"Service {service['metadata']['name']} selects {len(selected)} Deployments"
        )
        port_names = {
            p.get("name") for c in selected[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    (monitor,) = k8s_docs("ServiceMonitor")
    watched = [
        s
        for s in k8s_docs("Service")
        if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert {s["metadata"]["name"] for s in watched} == {"tandem", "tandem-engine-gpu"}
    for service in watched:
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
            p["name"] for p in service["spec"]["ports"]
        }
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _container_env(deployment: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(deployment)["env"]}


@pytest.mark.parametrize("name", ["tandem-gateway", "tandem-engine-gpu"])
def test_k8s_tandem_deployment(name):
    deployment = k8s_object("Deployment", name)
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["http"])
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["args"][:2] == ["tandem", "serve"] and "0.0.0.0" in container["args"]

    env = _container_env(deployment)
    redis_url = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", env["TANDEM_REDIS_URL"])
    assert redis_url, env["TANDEM_REDIS_URL"]
    redis_service = k8s_object("Service", redis_url.group(1))
    assert int(redis_url.group(2)) in {p["port"] for p in redis_service["spec"]["ports"]}
    redis = k8s_object("Deployment", "tandem-redis")
    assert _selects(redis_service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    assert _container(redis)["image"] == "redis:7-alpine"

    # TANDEM_CONFIG is the ConfigMap's tandem.yaml where the pod mounts it
    config_path = Path(env["TANDEM_CONFIG"])
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    configmap = k8s_object("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    assert config_path.name in configmap["data"]
    cache_mount = [m for m in container["volumeMounts"] if m["mountPath"] == "/home/tandem/.cache/tandem"]
    assert cache_mount, "no volume for ~/.cache/tandem"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001  # the images' user

    if name == "tandem-gateway":
        assert deployment["spec"]["replicas"] == 3
        assert env["TANDEM_PROFILE"] == "dev"
        assert container["image"].startswith("tandem:")
    else:
        assert env["TANDEM_PROFILE"] == "prod"
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
        assert container["image"].startswith("tandem-cuda:")
        tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
        assert "nodeSelector" in (K8S_DIR / "gateway-gpu.yaml").read_text()


def test_k8s_configmap_is_a_valid_tandem_config():
    from backends.paged.config import EngineConfig
    from gateway.config import parse_config

    configmap = k8s_object("ConfigMap", "tandem-config")
    config = parse_config(yaml.safe_load(configmap["data"]["tandem.yaml"]), "deploy/k8s/configmap.yaml")
    for deployment in ("tandem-gateway", "tandem-engine-gpu"):
        profile = _container_env(k8s_object("Deployment", deployment))["TANDEM_PROFILE"]
        assert config.profiles[profile].models, (
            f"{deployment} serves profile {profile!r}, which has no models"
        )
    for model in config.profiles["prod"].models:
        assert model.backend == "paged"
        assert model.engine is None or isinstance(model.engine, EngineConfig)  # parse_config checked it
    assert all(m.backend == "llamacpp" for m in config.profiles["dev"].models)


def test_k8s_readme_tells_the_scale_out_story():
    text = (K8S_DIR / "README.md").read_text().lower()
    for phrase in ("stateless", "redis", "engines scale as pods", "servicemonitor"):
        assert phrase in text
