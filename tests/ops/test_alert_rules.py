"""The alert rules load in Prometheus and behave as their unit tests say (promtool, Debian's
`prometheus` package), and every alert carries what an operator needs to act on it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops.promql import exported_series, unknown_references

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "ops" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_DOC = ROOT / "ops" / "ALERTS.md"
INSTALL_HINT = (
    "promtool is missing: install Debian's Prometheus package "
    "(`./dev test` installs it: `apt-get install -y --no-install-recommends prometheus`)"
)


def promtool(*args: str) -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    done = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(
            f"promtool {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}",
            pytrace=False,
        )


def test_rules_are_valid() -> None:
    promtool("check", "rules", str(ALERTS.relative_to(ROOT)))


def test_rules_unit_tests_pass() -> None:
    promtool("test", "rules", str((PROMETHEUS / "alerts_test.yml").relative_to(ROOT)))


def test_prometheus_config_is_valid() -> None:
    # check config also loads the rule files the config names
    promtool("check", "config", str((PROMETHEUS / "prometheus.yml").relative_to(ROOT)))


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert [g["name"] for g in doc["groups"]] == ["stripemeter"]
    return [r for r in doc["groups"][0]["rules"] if "alert" in r]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors = set()
    for line in markdown.splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_alert_says_how_bad_and_what_next() -> None:
    anchors = github_anchors(ALERTS_DOC.read_text())
    rules = alert_rules()
    assert len(rules) >= 8
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook_url"] == f"ops/ALERTS.md#{name.lower()}", name
        assert name.lower() in anchors, f"ops/ALERTS.md has no section for {name}"


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    tested: dict[str, set[str]] = {}
    for case in tests:
        for check in case["alert_rule_test"]:
            tested.setdefault(check["alertname"], set()).add("fires" if check["exp_alerts"] else "silent")
    for rule in alert_rules():
        assert tested.get(rule["alert"]) == {"fires", "silent"}, (
            f"{rule['alert']} needs a test where it fires and one where it does not"
        )


def test_alerts_use_metrics_the_code_exports() -> None:
    known = exported_series()
    problems = [f"{r['alert']}: {p}" for r in alert_rules() for p in unknown_references(r["expr"], known)]
    assert not problems, "\n".join(problems)
