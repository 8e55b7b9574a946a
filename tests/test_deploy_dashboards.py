"""Static checks of the Grafana dashboards (config/grafana/dashboards): their structure, the metric contract
of docs/metrics.md, and that every expression parses (`promtool`; skips without it). Fast and offline."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.deploy_support import (
    DASHBOARD_FILES,
    DASHBOARDS_DIR,
    DATASOURCE_UID,
    QUERIES,
    all_panels,
    documented_metrics,
    instantiate,
    label_problems,
    load_dashboard,
    metric_names,
    require_tool,
    template_queries,
)

GRAFANA_RANGES = {"$__rate_interval", "$__range", "$__interval"}


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
