"""The small JSON-schema validator of tests/deploy_support.py against the vendored schemas in tests/data."""

from __future__ import annotations

import json

import pytest

from tests.deploy_support import (
    ROOT,
    _schema_file,
    compose_schema,
    k8s_docs,
    k8s_errors,
    load_yaml,
    schema_errors,
    unsupported_keywords,
)


@pytest.mark.parametrize("name", ["compose-spec.json", "k8s-schemas.json", "k8s-extra-schemas.json"])
def test_the_validator_implements_every_keyword_of_the_vendored_schemas(name):
    root = _schema_file(name)
    starts = [{"$ref": f"#/$defs/{d}"} for d in root["kinds"].values()] if "kinds" in root else [root]
    assert [k for start in starts for k in unsupported_keywords(root, start)] == []


def test_the_validator_catches_mistakes():
    compose = load_yaml(ROOT / "docker-compose.yml")
    typo = {**compose, "services": {**compose["services"], "redis": {"imagee": "redis:7-alpine"}}}
    assert any("unknown key 'imagee'" in e for e in schema_errors(typo, compose_schema(), compose_schema()))
    bad_gpu = {"services": {"g": {"image": "x", "deploy": {"resources": {"reservations": {"devices": [
        {"driver": "nvidia", "count": 1, "capabilities": "gpu"}]}}}}}}  # fmt: skip
    assert any("capabilities" in e for e in schema_errors(bad_gpu, compose_schema(), compose_schema()))

    deployment = next(d for d in k8s_docs() if d["kind"] == "Deployment")
    assert k8s_errors(deployment) == []
    assert any("unknown key 'replica'" in e for e in k8s_errors({**deployment, "replica": 3}))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0] = {**container, "ports": [{"containerPort": "8000"}]}
    assert any("containerPort: expected integer" in e for e in k8s_errors(broken))
    assert k8s_errors({"apiVersion": "v1", "kind": "Pod"}) != []
