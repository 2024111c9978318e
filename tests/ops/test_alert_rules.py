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

from stripemeter.cli import main
from stripemeter.tools.alert_rules import DEFAULT_RUNBOOK_BASE, RulesError, render
from tests.ops.kustomize import build
from tests.ops.promql import exported_series, unknown_references

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "ops" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_DOC = ROOT / "ops" / "ALERTS.md"
MONITORING = ROOT / "deploy" / "k8s" / "monitoring"
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
        assert annotations["runbook_url"] == f"{DEFAULT_RUNBOOK_BASE}/ops/ALERTS.md#{name.lower()}", name
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


def test_the_prometheus_rule_for_kubernetes_is_the_rendering_of_the_rules() -> None:
    """deploy/k8s/monitoring/prometheusrule.yaml is generated from alerts.yml: it must be current."""
    checked_in = (MONITORING / "prometheusrule.yaml").read_text()
    assert checked_in == render(ALERTS.read_text(), DEFAULT_RUNBOOK_BASE, "kubernetes"), (
        "prometheusrule.yaml is not alerts.yml's: run `stripemeter alerts --format kubernetes"
        " > deploy/k8s/monitoring/prometheusrule.yaml` from the repository's root"
    )
    rule = yaml.safe_load(checked_in)
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def test_a_runbook_base_changes_the_links_and_nothing_else() -> None:
    source = yaml.safe_load(ALERTS.read_text())
    base = "https://git.example.org/acme/stripemeter/-/blob/v1.2.0"
    for output in ("prometheus", "kubernetes"):
        rendered = yaml.safe_load(render(ALERTS.read_text(), base + "/", output))
        groups = rendered["spec"] if output == "kubernetes" else rendered
        rules = groups["groups"][0]["rules"]
        assert [r["annotations"]["runbook_url"] for r in rules] == [
            f"{base}/ops/ALERTS.md#{r['alert'].lower()}" for r in rules
        ]
        for rule in rules:  # as the source once the links are put back
            rule["annotations"]["runbook_url"] = rule["annotations"]["runbook_url"].replace(
                base, DEFAULT_RUNBOOK_BASE
            )
        assert groups == source


@pytest.mark.parametrize(
    "base", ["ops/ALERTS.md", "git.example.org/x", "https://x.example/a?b=1", "https://x y"]
)
def test_a_base_that_is_not_an_absolute_url_is_refused(base: str) -> None:
    with pytest.raises(RulesError, match="absolute"):
        render(ALERTS.read_text(), base)


def test_an_alert_without_a_runbook_link_is_refused() -> None:
    rules = ALERTS.read_text()
    without = rules.replace(
        '          runbook_url: "https://stripemeter.example/blob/main/ops/ALERTS.md#stripemeterapidown"\n',
        "",
    )
    assert without != rules
    with pytest.raises(RulesError, match="runbook_url"):
        render(without)


def test_the_command_prints_the_rules_with_the_base(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["alerts", "--runbook-base", "https://runbooks.acme.example/sm"]) == 0
    out = capsys.readouterr().out
    assert "https://runbooks.acme.example/sm/ops/ALERTS.md#stripemeterapidown" in out
    assert DEFAULT_RUNBOOK_BASE not in out
    assert main(["alerts", "--runbook-base", "runbooks"]) == 2
    assert "absolute" in capsys.readouterr().err


def test_the_pod_monitors_scrape_the_jobs_the_rules_expect() -> None:
    """Each PodMonitor selects the pods of a component by their labels and a container port by name,
    and names the job the rules match on."""
    monitors = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all((MONITORING / "podmonitor.yaml").read_text())
    }
    assert set(monitors) == {"stripemeter-api", "stripemeter-worker"}
    pods: dict[frozenset[tuple[str, str]], set[str]] = {}
    for overlay in sorted((ROOT / "deploy" / "k8s" / "overlays").iterdir()):
        for doc in build(overlay):
            if doc["kind"] in {"Deployment", "StatefulSet"}:
                template = doc["spec"]["template"]
                ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
                pods[frozenset(template["metadata"]["labels"].items())] = ports
                assert doc["metadata"]["namespace"] == monitors["stripemeter-api"]["metadata"]["namespace"]
    assert pods
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
        wanted = monitor["spec"]["selector"]["matchLabels"].items()
        matching = [ports for labels, ports in pods.items() if wanted <= labels]
        assert matching, f"{name} selects no pod of deploy/k8s's overlays"
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
        assert all(endpoint["port"] in ports for ports in matching), f"{name}: no port {endpoint['port']}"
        assert {"targetLabel": "job", "replacement": name} in endpoint["relabelings"]
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["prometheusrule.yaml", "podmonitor.yaml"]


def test_the_monitoring_files_are_clean_yaml() -> None:
    from yamllint import config, linter

    conf = config.YamlLintConfig(
        "{extends: default, rules: {line-length: disable, document-start: disable,"
        " truthy: {check-keys: false}}}"
    )
    problems = [
        f"{path.name}:{p.line}: {p.message}"
        for path in sorted(MONITORING.glob("*.yaml"))
        for p in linter.run(path.read_text(), conf)
        if p.level == "error"
    ]
    assert not problems, "\n".join(problems)
