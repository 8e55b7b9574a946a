"""Helpers of the deployment-artifact tests (tests/test_deploy_*.py, tests/test_dashboards_live.py): paths,
loaders, a small JSON-schema validator, the Kubernetes manifests, the Grafana dashboards' queries. No tests.

Schemas (tests/data/, provenance in its README): the Compose Specification schema from the docker-compose
1.29.2 wheel, Kubernetes 1.33's strict schemas from the kubernetes-validate wheel, and compact schemas of
ServiceMonitor and Kustomization written here. They are checked by the small validator below (no jsonschema
dependency); it refuses any keyword it does not implement instead of ignoring it.

Tools from Debian packages (`make install` installs them): `promtool` (prometheus) checks the Prometheus
config and that every dashboard expression parses; `docker-compose` runs `config -q`. Without them those
tests fail, naming the tool (require_tool).
"""

from __future__ import annotations

import json
import re
import shutil
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
    """A program the tests drive for real. `make install` installs it; a test never skips for want of it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: run `make install` (it installs the system packages)")
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


# ---- dashboards: the metric contract and the queries -------------------------------------------------------


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
