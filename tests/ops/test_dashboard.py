"""The Grafana dashboard is valid, provisioned against the datasource the compose stack defines,
and every query parses and selects only metrics (and labels) that the code exports."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.promql import exported_series, selectors, unknown_references
from tests.ops.test_alert_rules import INSTALL_HINT

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "stripemeter.json"


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def test_dashboard_is_self_contained_and_provisioned() -> None:
    text = DASHBOARD.read_text()
    assert "${DS_" not in text, "provisioned dashboards cannot use import-time datasource inputs"
    board = dashboard()
    assert board["uid"] == "stripemeter" and board["title"] and board["schemaVersion"] >= 36
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == source["uid"], variable["name"]
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "stripemeter.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    every = dashboard()["panels"]
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in every:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
    for panel in panels():
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_every_query_uses_metrics_the_code_exports() -> None:
    known = exported_series()
    problems = [f"{title}: {p}" for title, expr in exprs() for p in unknown_references(expr, known)]
    assert not problems, "\n".join(problems)


def test_the_dashboard_shows_what_operators_need() -> None:
    used = {name for _, expr in exprs() for name, _ in selectors(expr)}
    needed = {
        "stripemeter_events_total",  # ingest by outcome
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "stripemeter_consumer_lag_seconds",
        "stripemeter_consumer_lag_messages",
        "reconciliation_diff_pct",  # drift by customer
        "reconciliation_diff_abs",
        "stripemeter_stripe_pushes_total",
        "stripemeter_stripe_errors_total",
        "stripemeter_stripe_parked_counters",
        "stripemeter_reconciliation_runs_total",
        "stripemeter_reconciliation_seconds_bucket",
        "stripemeter_replays_total",
    }
    assert needed <= used, f"no panel shows {sorted(needed - used)}"


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule (the dashboard's $variables sit inside
    label matcher strings, which PromQL takes as they are)."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([exe, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
