"""Static checks of the deployment artifacts: docker-compose.yml, the Dockerfiles, deploy/k8s/, the Prometheus
config and the Grafana provisioning and dashboards. Fast and offline.

Schemas (tests/data/, provenance in its README): the Compose Specification schema from the docker-compose
1.29.2 wheel, Kubernetes 1.33's strict schemas from the kubernetes-validate wheel, and compact schemas of
ServiceMonitor and Kustomization written here. They are checked by the small validator below (no jsonschema
dependency); it refuses any keyword it does not implement instead of ignoring it.

Tools from Debian packages (.ci/apt-packages): `promtool` (prometheus) checks the Prometheus config and
that every dashboard expression parses; `docker-compose` runs `config -q`. Without them these tests skip,
or fail when the CI environment variable is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
DASHBOARDS_DIR = ROOT / "config" / "grafana" / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARDS_DIR.glob("*.json"))
K8S_DIR = ROOT / "deploy" / "k8s"
DATASOURCE_UID = "prometheus"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` is not installed (Debian packages: .ci/apt-packages)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# ---- a small JSON-schema validator (the keywords of the schemas in tests/data) -----------------------------

_ANNOTATIONS = {
    "$schema", "$id", "id", "$comment", "title", "description", "default", "examples", "deprecated",
    "format", "definitions", "$defs",
}  # fmt: skip
_SCHEMA_MAPS = {"properties", "patternProperties", "definitions", "$defs"}
_SCHEMA_LISTS = {"oneOf", "anyOf", "allOf"}
_KEYWORDS = _ANNOTATIONS | _SCHEMA_MAPS | _SCHEMA_LISTS | {
    "$ref", "type", "enum", "const", "required", "additionalProperties", "items", "uniqueItems",
    "minItems", "minimum", "maximum", "pattern",
}  # fmt: skip


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    python = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}[name]
    return isinstance(value, python)


def _resolve(root: dict, ref: str) -> dict:
    assert ref.startswith("#/"), f"only local $refs are supported: {ref}"
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def unsupported_keywords(root: dict, schema: Any, where: str = "#", seen: set | None = None) -> list[str]:
    """Keywords the validator would not enforce, in every schema reachable from `schema` (x-* are
    annotations)."""
    seen = set() if seen is None else seen
    if isinstance(schema, bool):
        return []
    found = []
    for key, value in schema.items():
        if key.startswith("x-") or key in ("definitions", "$defs"):
            continue
        if key not in _KEYWORDS:
            found.append(f"{where}/{key}")
        elif key == "$ref" and value not in seen:
            seen.add(value)
            found += unsupported_keywords(root, _resolve(root, value), value, seen)
        elif key in _SCHEMA_MAPS:
            for name, sub in value.items():
                found += unsupported_keywords(root, sub, f"{where}/{key}/{name}", seen)
        elif key in _SCHEMA_LISTS:
            for i, sub in enumerate(value):
                found += unsupported_keywords(root, sub, f"{where}/{key}/{i}", seen)
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            found += unsupported_keywords(root, value, f"{where}/{key}", seen)
    return found


def schema_errors(instance: Any, schema: Any, root: dict, path: str = "$") -> list[str]:
    """Every way `instance` breaks `schema`, as `path: problem` lines (empty: valid)."""
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{path}: not allowed here"]
    errors: list[str] = []
    for key, value in schema.items():
        if key in _ANNOTATIONS or key.startswith("x-"):
            continue
        if key == "$ref":
            errors += schema_errors(instance, _resolve(root, value), root, path)
        elif key == "type":
            names = value if isinstance(value, list) else [value]
            if not any(_is_type(instance, name) for name in names):
                errors.append(f"{path}: expected {' or '.join(names)}, got {type(instance).__name__}")
        elif key == "enum":
            if instance not in value:
                errors.append(f"{path}: {instance!r} is not one of {value}")
        elif key == "const":
            if instance != value:
                errors.append(f"{path}: must be {value!r}")
        elif key in ("oneOf", "anyOf", "allOf"):
            results = [schema_errors(instance, sub, root, path) for sub in value]
            passed = sum(not r for r in results)
            if key == "allOf":
                errors += [e for r in results for e in r]
            elif passed == 0:
                closest = min(results, key=len)
                errors.append(f"{path}: matches none of the {key} alternatives, e.g. {'; '.join(closest)}")
            elif key == "oneOf" and passed > 1:
                errors.append(f"{path}: matches {passed} of the oneOf alternatives, not exactly one")
        elif isinstance(instance, dict):
            errors += _object_errors(key, value, instance, schema, root, path)
        elif isinstance(instance, list):
            if key == "items":
                for i, item in enumerate(instance):
                    errors += schema_errors(item, value, root, f"{path}[{i}]")
            elif key == "uniqueItems" and value:
                dumped = [json.dumps(item, sort_keys=True) for item in instance]
                if len(set(dumped)) != len(dumped):
                    errors.append(f"{path}: items are not unique")
            elif key == "minItems" and len(instance) < value:
                errors.append(f"{path}: fewer than {value} items")
        elif isinstance(instance, str):
            if key == "pattern" and not re.search(value, instance):
                errors.append(f"{path}: {instance!r} does not match {value}")
        elif _is_type(instance, "number") and (
            (key == "minimum" and instance < value) or (key == "maximum" and instance > value)
        ):
            errors.append(f"{path}: {instance} is out of range ({key} {value})")
    return errors


def _object_errors(key: str, value: Any, instance: dict, schema: dict, root: dict, path: str) -> list[str]:
    errors = []
    if key == "required":
        errors += [f"{path}: missing required key {name!r}" for name in value if name not in instance]
    elif key == "properties":
        for name, sub in value.items():
            if name in instance:
                errors += schema_errors(instance[name], sub, root, f"{path}.{name}")
    elif key == "patternProperties":
        for pattern, sub in value.items():
            for name in instance:
                if re.search(pattern, name):
                    errors += schema_errors(instance[name], sub, root, f"{path}.{name}")
    elif key == "additionalProperties":
        known = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        for name in instance:
            if name in known or any(re.search(p, name) for p in patterns):
                continue
            if value is False:
                errors.append(f"{path}: unknown key {name!r}")
            else:
                errors += schema_errors(instance[name], value, root, f"{path}.{name}")
    return errors


@cache
def _schema_file(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def compose_schema() -> dict:
    return _schema_file("compose-spec.json")


def k8s_errors(doc: dict) -> list[str]:
    """Schema errors of one Kubernetes object, by its apiVersion and kind."""
    kind = f"{doc.get('apiVersion')}/{doc.get('kind')}"
    for name in ("k8s-schemas.json", "k8s-extra-schemas.json"):
        schemas = _schema_file(name)
        if kind in schemas["kinds"]:
            return schema_errors(doc, {"$ref": f"#/$defs/{schemas['kinds'][kind]}"}, schemas)
    return [f"no schema for {kind} in tests/data (add one, or use a kind that has one)"]


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


# ---- dashboards --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentedMetric:
    name: str
    type: str
    labels: frozenset[str]

    def series(self) -> dict[str, frozenset[str]]:
        """The series names Prometheus stores for this metric, with their labels."""
        if self.type != "histogram":
            return {self.name: self.labels}
        return {
            f"{self.name}_bucket": self.labels | {"le"},
            f"{self.name}_sum": self.labels,
            f"{self.name}_count": self.labels,
        }


@cache
def documented_metrics() -> dict[str, DocumentedMetric]:
    """Every metric of the contract, docs/metrics.md, by series name (histograms: _bucket, _sum, _count)."""
    metrics: dict[str, DocumentedMetric] = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        row = re.match(r"\|\s*`(tandem_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if row:
            labels = frozenset(x.strip() for x in row.group(3).split(",") if x.strip() not in ("", "—", "-"))
            metric = DocumentedMetric(row.group(1), row.group(2), labels)
            for series in metric.series():
                metrics[series] = metric
    assert len(metrics) > 20, "docs/metrics.md's tables were not found"
    return metrics


@dataclass(frozen=True)
class DashboardQuery:
    dashboard: str  # file name
    panel: str  # panel title
    ref_id: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.dashboard}:{self.panel}:{self.ref_id}"


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    """Top-level panels and the panels inside collapsed rows."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels += panel.get("panels", [])
    return panels


def dashboard_queries() -> list[DashboardQuery]:
    return [
        DashboardQuery(path.name, panel["title"], target["refId"], target["expr"])
        for path in DASHBOARD_FILES
        for panel in all_panels(load_dashboard(path))
        for target in panel.get("targets", [])
    ]


def template_queries() -> list[tuple[str, str]]:
    """(dashboard file, query) of every query template variable."""
    return [
        (path.name, variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"])
        for path in DASHBOARD_FILES
        for variable in load_dashboard(path)["templating"]["list"]
        if variable["type"] == "query"
    ]


GRAFANA_RANGES = {"$__rate_interval", "$__range", "$__interval"}


def instantiate(expr: str, rate_interval: str = "1m", range_: str = "5m") -> str:
    """The PromQL Grafana would send: its interval variables filled in, every template variable = All (.*)."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
    expr = expr.replace("$__interval", rate_interval)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                 "unless", "offset", "inf", "nan"}  # fmt: skip
_GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (identifiers that are not functions, keywords or labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(_GROUPING, " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        is_call = text[match.end() :].lstrip().startswith("(")
        if not is_call and match.group() not in _PROMQL_WORDS:
            names.add(match.group())
    return names


def label_problems(expr: str) -> list[str]:
    """Labels matched or grouped by that the selected metrics do not have (per docs/metrics.md)."""
    documented = documented_metrics()
    problems = []
    for selector in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        metric = documented.get(selector.group(1))
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector.group(2)):
            if metric and label not in metric.series()[selector.group(1)]:
                problems.append(f"{selector.group(1)} has no label {label!r}")
    available = set().union(*(documented[n].series()[n] for n in metric_names(expr) if n in documented))
    for grouping in re.finditer(_GROUPING, expr):
        for label in filter(None, (x.strip() for x in grouping.group(1).split(","))):
            if label not in available:
                problems.append(f"grouping by {label!r}, which none of the metrics has")
    return problems


QUERIES = dashboard_queries()


def test_there_are_three_dashboards_with_queries():
    assert [p.name for p in DASHBOARD_FILES] == ["engine.json", "overview.json", "teams.json"]
    assert len(QUERIES) > 30


def _overlap(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_is_a_valid_grafana_dashboard(path):
    dashboard = load_dashboard(path)
    for key in ("title", "uid", "schemaVersion", "panels", "templating", "time", "tags"):
        assert key in dashboard, f"no {key!r}"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None, "provisioned dashboards must not carry a database id"
    assert re.fullmatch(r"[\w-]{1,40}", dashboard["uid"])
    panels = all_panels(dashboard)
    assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == DATASOURCE_UID
    top = dashboard["panels"]
    for i, panel in enumerate(top):
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h")), panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for other in top[:i]:
            assert not _overlap(grid, other["gridPos"]), f"{panel['title']!r} overlaps {other['title']!r}"
    for panel in panels:
        assert panel["type"] in {"row", "text", "timeseries", "stat", "bargauge", "gauge", "table"}
        assert panel.get("title"), f"panel {panel['id']} has no title"
        if panel["type"] in ("row", "text"):
            assert not panel.get("targets")
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, panel["title"]
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == DATASOURCE_UID and target["expr"].strip()
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= variables | {v[1:] for v in GRAFANA_RANGES}, (
                f"undefined variables in {target['expr']}"
            )
            ranges = re.findall(r"\[([^\]]*)\]", target["expr"])
            assert all(r in GRAFANA_RANGES for r in ranges), f"hard-coded range in {target['expr']}"


def test_dashboard_uids_and_titles_are_unique():
    dashboards = [load_dashboard(p) for p in DASHBOARD_FILES]
    assert len({d["uid"] for d in dashboards}) == len({d["title"] for d in dashboards}) == len(dashboards)


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.id)
def test_dashboard_expression_uses_only_documented_metrics_and_labels(query):
    names = metric_names(query.expr)
    assert names, f"no metric in {query.expr}"
    undocumented = sorted(n for n in names if n not in documented_metrics())
    assert not undocumented, f"not in docs/metrics.md: {undocumented}"
    assert label_problems(query.expr) == []


def test_template_variables_use_documented_metrics_and_labels():
    queries = template_queries()
    assert {d for d, _ in queries} == {p.name for p in DASHBOARD_FILES}
    for dashboard, query in queries:
        match = re.fullmatch(r"label_values\((\w+)(?:\{[^}]*\})?,\s*(\w+)\)", query)
        assert match, f"{dashboard}: {query}"
        metric = documented_metrics().get(match.group(1))
        assert metric and match.group(2) in metric.labels, f"{dashboard}: {query}"


def test_dashboards_cover_what_they_are_for():
    def used(name: str) -> set[str]:
        return {m for q in QUERIES if q.dashboard == name for m in metric_names(q.expr)}

    def exprs(name: str) -> str:
        return "\n".join(q.expr for q in QUERIES if q.dashboard == name)

    overview = used("overview.json")
    assert {
        "tandem_requests_total", "tandem_request_duration_seconds_bucket",
        "tandem_time_to_first_token_seconds_bucket", "tandem_inter_token_latency_seconds_bucket",
        "tandem_generation_tokens_total", "tandem_requests_in_flight", "tandem_requests_queued",
    } <= overview  # fmt: skip
    for quantile in ("0.5", "0.95", "0.99"):
        for metric in ("request_duration", "time_to_first_token", "inter_token_latency"):
            assert f"histogram_quantile({quantile}, sum by (le, model) (rate(tandem_{metric}" in exprs(
                "overview.json"
            )
    assert "sum by (model, backend) (rate(tandem_generation_tokens_total" in exprs("overview.json")
    engine = used("engine.json")
    assert {
        "tandem_engine_kv_cache_usage_ratio", "tandem_engine_requests_running",
        "tandem_engine_requests_waiting", "tandem_engine_step_batch_size_bucket",
        "tandem_engine_step_tokens_bucket", "tandem_engine_preemptions_total",
    } <= engine  # fmt: skip
    assert re.search(
        r"rate\(tandem_engine_prefix_cache_hits_total[^/]*/\s*sum by \(model\) \(rate\("
        r"tandem_engine_prefix_cache_queries_total",
        exprs("engine.json"),
    ), "prefix-cache hit rate = hits / queries"
    teams = exprs("teams.json")
    assert "sum by (team) (rate(tandem_requests_total" in teams
    assert "sum by (team, limit) (rate(tandem_rate_limit_rejections_total" in teams
    for name in ("overview.json", "engine.json"):
        variables = load_dashboard(DASHBOARDS_DIR / name)["templating"]["list"]
        assert "model" in {v["name"] for v in variables}
        assert 'model=~"$model"' in exprs(name)


def test_every_dashboard_expression_parses(tmp_path):
    promtool = require_tool("promtool")
    groups = [
        {"name": f"{i}: {q.id}", "rules": [{"alert": f"q{i}", "expr": instantiate(q.expr)}]}
        for i, q in enumerate(QUERIES)
    ]
    groups += [
        {
            "name": f"var {i}: {d}",
            "rules": [{"alert": f"v{i}", "expr": re.sub(r"label_values\((\w+).*", r"\1", q)}],
        }
        for i, (d, q) in enumerate(template_queries())
    ]
    rules = tmp_path / "dashboard-expressions.rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False, width=1000))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(groups)} rules found" in result.stdout


# ---- Dockerfiles -------------------------------------------------------------------------------------------

_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER", "WORKDIR",
    "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            keyword, _, arguments = current.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
        current = ""
    return instructions


def _makefile_var(name: str) -> str:
    match = re.search(rf"^{name}\s*\??:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, name
    return match.group(1)


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def _check_common(instructions: list[tuple[str, str]]) -> None:
    assert {k for k, _ in instructions} <= _INSTRUCTIONS
    final = _final_stage(instructions)
    final_keys = [k for k, _ in final]
    assert ("EXPOSE", "8000") in final
    healthcheck = next(a for k, a in final if k == "HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert "/health" in command[-1]
    compile(command[-1], "HEALTHCHECK", "exec")
    cmd = json.loads(next(a for k, a in final if k == "CMD"))
    assert cmd[:2] == ["tandem", "serve"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "USER" in final_keys, "runs as root"
    llama = _makefile_var("LLAMA_CPP_VERSION")
    assert ("ARG", f"LLAMA_CPP_VERSION={llama}") in instructions
    assert f'"llama-cpp-python=={llama}"' in (ROOT / "pyproject.toml").read_text()
    assert any(k == "ENV" and a == 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' for k, a in instructions)
    runs = [a for k, a in final if k == "RUN"]
    assert any(re.search(r"\bpip install\b.* \.(\s|$)", run) for run in runs), "no `pip install .`"


def test_dev_dockerfile():
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    _check_common(instructions)
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in instructions
    assert [a for k, a in instructions if k == "FROM"] == [
        "${PYTHON_IMAGE} AS llama-wheel",
        "${PYTHON_IMAGE}",
    ]
    torch = _makefile_var("TORCH_SPEC")
    assert ("RUN", f"pip install {torch} --index-url https://download.pytorch.org/whl/cpu") in instructions
    build_deps = next(a for k, a in instructions if k == "RUN" and "apt-get install" in a)
    assert "build-essential" in build_deps and "cmake" in build_deps
    assert ("ENV", "TANDEM_PROFILE=dev") in instructions


def test_cuda_dockerfile():
    instructions = dockerfile_instructions(ROOT / "Dockerfile.cuda")
    _check_common(instructions)
    base = next(a for k, a in instructions if k == "ARG" and a.startswith("CUDA_IMAGE="))
    assert re.fullmatch(
        r"CUDA_IMAGE=(nvidia/cuda:[\w.-]*runtime[\w.-]*|pytorch/pytorch:[\w.-]*cuda[\w.-]*)", base
    )
    assert [a for k, a in instructions if k == "FROM"] == ["${CUDA_IMAGE}"]
    assert ("RUN", f"pip install {_makefile_var('TORCH_SPEC')}") in instructions
    assert any(k == "ENV" and a.startswith("TANDEM_PROFILE=prod") for k, a in instructions)


def _dockerignore_patterns() -> list[re.Pattern]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not modelled by this test"
        regex = re.escape(line.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        patterns.append(re.compile(regex.replace(r"\?", "[^/]")))
    return patterns


def dockerignored(relative: str) -> bool:
    """Whether Docker leaves `relative` (or a folder above it) out of the build context."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(p.fullmatch(prefix) for p in _dockerignore_patterns() for prefix in prefixes)


def test_dockerignore_keeps_local_state_out_and_what_the_images_copy_in():
    for path in (".venv/bin/python", ".git/HEAD", "x.gguf", "models/tiny/model.gguf", "a/model.safetensors",
                 "gateway/__pycache__/app.cpython-311.pyc", ".pytest_cache/v", ".ruff_cache/x"):  # fmt: skip
        assert dockerignored(path), path
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        for keyword, arguments in dockerfile_instructions(ROOT / dockerfile):
            if keyword != "COPY" or arguments.startswith("--from"):
                continue
            for source in arguments.split()[:-1]:
                path = ROOT / source
                assert path.exists(), f"{dockerfile}: COPY {source}: no such file"
                # the code an image needs must get in; local state under a copied folder may stay out
                files = [path] if path.is_file() else [f for f in path.rglob("*.py") if f.is_file()]
                for file in files:
                    relative = file.relative_to(ROOT).as_posix()
                    if "__pycache__" not in relative:
                        assert not dockerignored(relative), (
                            f"{dockerfile} copies {relative}, .dockerignore drops it"
                        )


# ---- deploy/k8s --------------------------------------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


@cache
def _k8s_docs() -> tuple[tuple[str, dict], ...]:
    return tuple(
        (path.name, doc) for path in k8s_files() for doc in yaml.safe_load_all(path.read_text()) if doc
    )


def k8s_docs(kind: str | None = None) -> list[dict]:
    return [doc for _, doc in _k8s_docs() if kind is None or doc["kind"] == kind]


def k8s_object(kind: str, name: str) -> dict:
    (doc,) = [d for d in k8s_docs(kind) if d["metadata"]["name"] == name]
    return doc


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


def test_ci_installs_the_tools_these_tests_need():
    packages = (ROOT / ".ci" / "apt-packages").read_text().split()
    assert {"prometheus", "docker-compose"} <= set(packages)
