"""deploy/k8s/ against the Kubernetes API schemas (kubernetes-validate bundles them, so this runs
offline), and consistent with itself and with the code: selectors, ports, references to the
ConfigMap and Secret, settings the code reads, static membership and the table state volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stripemeter.domain.config import Settings, load_settings
from tests.ops.deployment import KNOWN_ENV, ROOT, check_command

K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33"
NAMESPACE = "stripemeter"


Manifest = dict[str, Any]


def manifests() -> list[tuple[Path, Manifest]]:
    return [
        (path, doc)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def by_kind(kind: str) -> dict[str, Manifest]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def workloads() -> list[Manifest]:
    return [doc for _, doc in manifests() if doc["kind"] in {"Deployment", "StatefulSet", "Job"}]


def containers(workload: Manifest) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return found


@pytest.mark.parametrize(
    "path, doc",
    [pytest.param(p, d, id=f"{p.name}:{d['kind']}/{d['metadata']['name']}") for p, d in manifests()],
)
def test_manifest_matches_the_kubernetes_schema(path: Path, doc: Manifest) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")


def test_kustomization_lists_every_manifest_in_order() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert kustomization["resources"][0] == "namespace.yaml"


def test_everything_lives_in_the_namespace() -> None:
    for path, doc in manifests():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, f"{path.name}: {doc['metadata']['name']}"
    assert set(by_kind("Namespace")) == {NAMESPACE}


def test_selectors_match_pod_labels_and_services_find_their_pods() -> None:
    pod_labels = []
    for workload in workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        pod_labels.append((workload, labels))
        if workload["kind"] != "Job":
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items(), workload["metadata"]["name"]
    for name, service in by_kind("Service").items():
        selector = service["spec"]["selector"]
        matched = [w for w, labels in pod_labels if selector.items() <= labels.items()]
        assert len(matched) == 1, f"Service {name} selects {len(matched)} workloads"
        port_names = {p["name"] for c in containers(matched[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service {name}: no container port {port['targetPort']}"


def test_env_comes_from_settings_the_code_reads_and_references_exist() -> None:
    (config,) = by_kind("ConfigMap").values()
    (secret,) = by_kind("Secret").values()
    assert set(config["data"]) <= KNOWN_ENV, sorted(set(config["data"]) - KNOWN_ENV)
    kafka_passwords = {"KAFKA_WORKER_PASSWORD", "KAFKA_API_PASSWORD", "KAFKA_ADMIN_PASSWORD"}
    assert set(secret["stringData"]) == {
        "STRIPE_API_KEY",
        "DATABASE_URL",
        "STRIPE_WEBHOOK_SECRET",
        *kafka_passwords,
    }
    assert not {"STRIPE_API_KEY", "DATABASE_URL", "KAFKA_SASL_PASSWORD"} & set(config["data"]), (
        "secrets belong in the Secret"
    )
    for workload in workloads():
        for container in containers(workload):
            check_command(container["command"])
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == config["metadata"]["name"]
            for var in container.get("env", []):
                assert var["name"] in KNOWN_ENV, f"{workload['metadata']['name']}: {var['name']}"
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


def test_probes_and_scrape_annotations_use_the_ports_the_processes_listen_on() -> None:
    defaults = Settings()
    expected = {"stripemeter-worker": defaults.worker_web_port, "stripemeter-api": defaults.api_port}
    for workload in workloads():
        name = workload["metadata"]["name"]
        if name not in expected:
            continue
        (container,) = containers(workload)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        scraped = expected[name]
        if name == "stripemeter-api":  # Prometheus reads the operator listener, which the Service leaves out
            scraped = defaults.operator_metrics_port
            env = {v["name"]: v.get("value") for v in container["env"]}
            assert env["STRIPEMETER_OPERATOR_METRICS_PORT"] == str(scraped)
            assert ports.pop("operator-metrics") == scraped
            service = by_kind("Service")[name]
            assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
        assert list(ports.values()) == [expected[name]], name
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in container:
                assert ports[container[probe]["httpGet"]["port"]] == expected[name], (name, probe)
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(scraped)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_workers_scale_with_static_membership_and_keep_table_state() -> None:
    worker = by_kind("StatefulSet")["stripemeter-worker"]
    spec = worker["spec"]
    headless = by_kind("Service")[spec["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    (container,) = containers(worker)
    env = {v["name"]: v for v in container["env"]}
    instance = env["STRIPEMETER_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert instance == "metadata.name", "static membership needs the stable pod name"
    (config,) = by_kind("ConfigMap").values()
    (claim,) = spec["volumeClaimTemplates"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    assert mount["mountPath"] == config["data"]["STRIPEMETER_STATE_DIR"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert worker["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 65534
    assert spec["replicas"] <= int(config["data"]["STRIPEMETER_PARTITIONS"]), "idle workers"


def test_the_init_job_migrates_and_creates_topics() -> None:
    (job,) = by_kind("Job").values()
    (container,) = containers(job)
    assert container["command"] == ["sh", "-c", "stripemeter db migrate && stripemeter topics create"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"OnFailure", "Never"}


def test_yaml_files_are_clean() -> None:
    """yamllint over every YAML file of ops and deploy (long lines allowed: alert descriptions)."""
    from yamllint import config, linter

    conf = config.YamlLintConfig(
        "{extends: default, rules: {line-length: disable, document-start: disable,"
        " truthy: {check-keys: false}}}"
    )
    files = [ROOT / "docker-compose.yml", *sorted((ROOT / "ops").rglob("*.yml")), *sorted(K8S.glob("*.yaml"))]
    problems = [
        f"{path.relative_to(ROOT)}:{p.line}: {p.message}"
        for path in files
        for p in linter.run(path.read_text(), conf)
        if p.level == "error"
    ]
    assert not problems, "\n".join(problems)


def test_each_workload_logs_in_to_kafka_as_its_own_principal_with_settings_the_code_accepts() -> None:
    (config,) = by_kind("ConfigMap").values()
    (secret,) = by_kind("Secret").values()
    users = []
    for workload in workloads():
        for container in containers(workload):
            env = dict(config["data"])
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    env[var["name"]] = secret["stringData"][ref["key"]]
                elif "value" in var:
                    env[var["name"]] = var["value"]
            settings = load_settings(env)  # a bad or missing Kafka setting raises, naming it
            assert settings.kafka.sasl and settings.kafka.tls, workload["metadata"]["name"]
            users.append(settings.kafka_sasl_username)
    assert sorted(users) == ["stripemeter-admin", "stripemeter-api", "stripemeter-worker"]
