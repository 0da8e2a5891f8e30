"""The Grafana dashboard: well-formed, on the provisioned datasource, covering what operators watch.

Whether every metric it names is really exported is checked against a running server in
test_entrypoint.py; here the PromQL is parsed by promtool and the panels are checked statically.
"""

from __future__ import annotations

import yaml

from tests.docker.promql import dashboard_queries, label_names, load_dashboard, metric_names
from tests.docker.tools import DASHBOARD, GRAFANA, promtool, run_checker

# What the dashboard must show, and the metric (and grouping label) that shows it.
REQUIRED = {
    "backtracks per second": ("backtrack_backtracks_total", None),
    "backtracks per request": ("backtrack_request_backtracks_bucket", None),
    "tokens per second": ("backtrack_generated_tokens_total", None),
    "time to first token": ("backtrack_time_to_first_token_seconds_bucket", None),
    "inter-token latency": ("backtrack_inter_token_latency_seconds_bucket", None),
    "queue size": ("backtrack_queue_size", None),
    "requests by finish reason": ("backtrack_requests_total", "finish_reason"),
    "batch size per step": ("backtrack_batch_size_bucket", None),
    "KV cache held": ("backtrack_kv_cache_tokens", None),
    "KV cache budget": ("backtrack_kv_cache_budget_tokens", None),
    "decode time per step": ("backtrack_decode_step_seconds_bucket", None),
    "prefill time per step": ("backtrack_prefill_step_seconds_bucket", None),
}


def provisioned_datasource_uid() -> str:
    config = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (datasource,) = config["datasources"]
    assert datasource["type"] == "prometheus"
    return datasource["uid"]


def test_every_panel_and_query_uses_the_provisioned_datasource():
    dashboard = load_dashboard(DASHBOARD)
    uid = provisioned_datasource_uid()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]


def test_panels_have_unique_ids_and_do_not_overlap():
    panels = load_dashboard(DASHBOARD)["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"panel {panel['title']!r} overlaps another"
        assert grid["x"] + grid["w"] <= 24
        cells |= area


def test_shows_everything_an_operator_watches():
    queries = dashboard_queries(load_dashboard(DASHBOARD))
    for what, (metric, grouping) in REQUIRED.items():
        matching = [q for q in queries if metric in metric_names(q.expr)]
        assert matching, f"no panel shows {what} ({metric})"
        if grouping:
            assert any(grouping in label_names(q.expr) for q in matching), (
                f"{what}: not by {grouping}"
            )


def test_only_project_metrics_are_queried():
    for query in dashboard_queries(load_dashboard(DASHBOARD)):
        names = metric_names(query.expr)
        assert names, f"{query.panel}: no metric found in {query.expr!r}"
        assert all(name.startswith("backtrack_") for name in names), (query.panel, names)


def test_promtool_parses_every_query(tmp_path):
    """Each query as a recording rule: `promtool check rules` rejects any PromQL syntax error."""
    rules = [
        {"record": f"dashboard:query_{index}", "expr": query.promql()}
        for index, query in enumerate(dashboard_queries(load_dashboard(DASHBOARD)))
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_checker([promtool(), "check", "rules", str(path)])
    assert f"{len(rules)} rules found" in result.stdout
