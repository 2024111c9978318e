"""deploy/k8s/: each overlay (dev, prod), rendered, against the Kubernetes API schemas
(kubernetes-validate bundles them, so this runs offline), and consistent with itself and with the
code: selectors, ports, references to the ConfigMap and Secret, settings the code reads, static
membership, the table state volume; and what an SRE asks of it: resources, securityContext, probes
inside their timeouts, migrations before every pod, no Secret in prod, PodDisruptionBudgets and
NetworkPolicies."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stripemeter.api import health
from stripemeter.domain.config import Settings, load_settings
from tests.ops.deployment import KNOWN_ENV, ROOT, check_command
from tests.ops.kustomize import Manifest, build, pod_containers

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.33"
NAMESPACE = "stripemeter"
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
SECRET_KEYS = {
    "STRIPE_API_KEY",
    "DATABASE_URL",
    "STRIPE_WEBHOOK_SECRET",
    "KAFKA_WORKER_PASSWORD",
    "KAFKA_API_PASSWORD",
    "KAFKA_ADMIN_PASSWORD",
}

# the worker's highest RSS measured (deploy/README.md: Sizing): catching up an 800,000-event backlog
# of events with 200 bytes of meta each
WORKER_PEAK_MIB = 1709

_rendered: dict[str, list[Manifest]] = {}


def render(overlay: str) -> list[Manifest]:
    if overlay not in _rendered:
        _rendered[overlay] = build(K8S / "overlays" / overlay)
    return _rendered[overlay]


def by_kind(overlay: str, kind: str) -> dict[str, Manifest]:
    return {doc["metadata"]["name"]: doc for doc in render(overlay) if doc["kind"] == kind}


def workloads(overlay: str) -> list[Manifest]:
    return [doc for doc in render(overlay) if doc["kind"] in WORKLOADS]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Manifest) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = pod_spec(workload)["containers"]
    return found


def example_secret() -> Manifest:
    doc: Manifest = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    return doc


def secret_values(overlay: str) -> dict[str, str]:
    """The Secret's values: the dev overlay makes its own; prod reads one made before (the example's)."""
    made = by_kind(overlay, "Secret")
    if made:
        (secret,) = made.values()
        return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    values: dict[str, str] = example_secret()["stringData"]
    return values


def config(overlay: str) -> dict[str, str]:
    (config_map,) = by_kind(overlay, "ConfigMap").values()
    data: dict[str, str] = config_map["data"]
    return data


def container_env(overlay: str, container: dict[str, Any]) -> dict[str, str]:
    """The environment the container's process sees: the ConfigMap, then its own env."""
    env = dict(config(overlay))
    secrets = secret_values(overlay)
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            env[var["name"]] = secrets[ref["key"]]
        elif "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = "stripemeter-worker-0"  # the downward API's pod name
    return env


def all_docs() -> list[tuple[str, Manifest]]:
    docs = [(overlay, doc) for overlay in OVERLAYS for doc in render(overlay)]
    return [*docs, ("example", example_secret())]


@pytest.mark.parametrize(
    "overlay, doc",
    [pytest.param(o, d, id=f"{o}:{d['kind']}/{d['metadata']['name']}") for o, d in all_docs()],
)
def test_manifest_matches_the_kubernetes_schema(overlay: str, doc: Manifest) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")


def _kustomize_binary() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_python_rendering_is_what_kustomize_renders(overlay: str) -> None:
    """Where kustomize (or kubectl) is installed, the rendering the other tests check is kustomize's."""
    binary = _kustomize_binary()
    if binary is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    done = subprocess.run(
        [*binary, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120, check=True
    )

    def normal(doc: Manifest) -> Manifest:
        if doc["kind"] == "Secret":
            doc = {**doc, "data": {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}}
        return doc

    theirs = {(d["kind"], d["metadata"]["name"]): normal(d) for d in yaml.safe_load_all(done.stdout) if d}
    ours = {(d["kind"], d["metadata"]["name"]): normal(d) for d in render(overlay)}
    assert set(ours) == set(theirs)
    for key, doc in ours.items():
        assert doc == theirs[key], key


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lives_in_the_namespace(overlay: str) -> None:
    for doc in render(overlay):
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']}"
    assert set(by_kind(overlay, "Namespace")) == {NAMESPACE}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_pod_labels_and_services_find_their_pods(overlay: str) -> None:
    pod_labels = []
    for workload in workloads(overlay):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        pod_labels.append((workload, labels))
        if workload["kind"] != "Job":
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items(), workload["metadata"]["name"]
    for name, service in by_kind(overlay, "Service").items():
        selector = service["spec"]["selector"]
        matched = [w for w, labels in pod_labels if selector.items() <= labels.items()]
        assert len(matched) == 1, f"Service {name} selects {len(matched)} workloads"
        port_names = {p["name"] for c in containers(matched[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service {name}: no container port {port['targetPort']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_comes_from_settings_the_code_reads_and_references_exist(overlay: str) -> None:
    data = config(overlay)
    assert set(data) <= KNOWN_ENV, sorted(set(data) - KNOWN_ENV)
    assert set(secret_values(overlay)) == SECRET_KEYS
    assert not {"STRIPE_API_KEY", "DATABASE_URL", "KAFKA_SASL_PASSWORD"} & set(data), (
        "secrets belong in the Secret"
    )
    (config_map,) = by_kind(overlay, "ConfigMap")
    for workload in workloads(overlay):
        for container in pod_containers(workload):
            check_command(container["command"])
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == config_map
            for var in container.get("env", []):
                assert var["name"] in KNOWN_ENV, f"{workload['metadata']['name']}: {var['name']}"
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "stripemeter-secrets" and ref["key"] in SECRET_KEYS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_accepts_its_settings(overlay: str) -> None:
    """Each container's environment loads (a bad or missing setting raises, naming it)."""
    for workload in workloads(overlay):
        for container in pod_containers(workload):
            load_settings(container_env(overlay, container))


def test_the_example_secret_is_applied_by_no_overlay() -> None:
    """`apply -k` in prod never writes a Secret, so it never overwrites the real one; only dev makes
    one (placeholders), and the example is outside every kustomization."""
    assert not by_kind("prod", "Secret")
    assert set(by_kind("dev", "Secret")) == {"stripemeter-secrets"}
    assert example_secret()["metadata"] == {
        "name": "stripemeter-secrets",
        "namespace": NAMESPACE,
        "labels": {"app.kubernetes.io/name": "stripemeter"},
    }
    assert set(example_secret()["stringData"]) == SECRET_KEYS
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "secret.example.yaml" not in kustomization.read_text(), kustomization


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_scrape_annotations_use_the_ports_the_processes_listen_on(overlay: str) -> None:
    defaults = Settings()
    expected = {"stripemeter-worker": defaults.worker_web_port, "stripemeter-api": defaults.api_port}
    for workload in workloads(overlay):
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
            service = by_kind(overlay, "Service")[name]
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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_answer_inside_their_timeouts(overlay: str) -> None:
    """Every probe says its timeout; the API's readiness (checks at once, each bounded to
    health.TIMEOUT) has a second to spare; the worker's pages answer from memory."""
    for workload in workloads(overlay):
        for container in containers(workload):
            probes = {
                p: container[p] for p in ("livenessProbe", "readinessProbe", "startupProbe") if p in container
            }
            if workload["kind"] == "Job":
                assert not probes
                continue
            assert {"livenessProbe", "readinessProbe"} <= set(probes), workload["metadata"]["name"]
            for name, probe in probes.items():
                assert probe["timeoutSeconds"] >= 3, (workload["metadata"]["name"], name)
                assert probe["timeoutSeconds"] <= probe["periodSeconds"], (workload["metadata"]["name"], name)
    (api,) = containers(by_kind(overlay, "Deployment")["stripemeter-api"])
    assert api["readinessProbe"]["timeoutSeconds"] >= health.TIMEOUT + 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources_and_runs_locked_down(overlay: str) -> None:
    for workload in workloads(overlay):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        assert spec["serviceAccountName"] == "stripemeter" and spec["automountServiceAccountToken"] is False
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in pod_containers(workload):
            where = f"{name}/{container['name']}"
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), where
            # memory is reserved as used: request = limit (no overcommit, no eviction first)
            assert resources["limits"]["memory"] == resources["requests"]["memory"], where
            assert "cpu" not in resources["limits"], (
                f"{where}: a CPU limit throttles checkpoints and heartbeats"
            )
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: a writable /tmp"
    (sa,) = by_kind(overlay, "ServiceAccount").values()
    assert sa["automountServiceAccountToken"] is False
    assert not by_kind(overlay, "RoleBinding") and not by_kind(overlay, "ClusterRoleBinding")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrations_run_before_every_worker_and_api_pod(overlay: str) -> None:
    """An init container applies the schema before the process starts (migrate is idempotent and
    takes an advisory lock): no pod of a new version runs against an older schema."""
    for name in ("stripemeter-worker", "stripemeter-api"):
        workload = {**by_kind(overlay, "StatefulSet"), **by_kind(overlay, "Deployment")}[name]
        (init,) = pod_spec(workload)["initContainers"]
        (container,) = containers(workload)
        assert init["command"] == ["stripemeter", "db", "migrate"]
        assert init["image"] == container["image"], "the migrations of the release the pod runs"
        assert init["envFrom"] == container["envFrom"]


def test_the_topics_job_is_named_after_the_release() -> None:
    """A new release is a new Job (a Job's pod template is immutable); the name follows the image
    tag, which follows the package's version."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for overlay in OVERLAYS:
        (job,) = by_kind(overlay, "Job").values()
        (container,) = containers(job)
        assert container["command"] == ["stripemeter", "topics", "create"]
        assert pod_spec(job)["restartPolicy"] in {"OnFailure", "Never"}
        assert job["spec"]["ttlSecondsAfterFinished"] > 0
        tag = container["image"].rpartition(":")[2]
        assert tag == version, overlay
        assert job["metadata"]["name"] == f"stripemeter-topics-{version.replace('.', '-')}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_scale_with_static_membership_and_keep_table_state(overlay: str) -> None:
    worker = by_kind(overlay, "StatefulSet")["stripemeter-worker"]
    spec = worker["spec"]
    headless = by_kind(overlay, "Service")[spec["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    (container,) = containers(worker)
    env = {v["name"]: v for v in container["env"]}
    instance = env["STRIPEMETER_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert instance == "metadata.name", "static membership needs the stable pod name"
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == config(overlay)["STRIPEMETER_STATE_DIR"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pod_spec(worker)["securityContext"]["fsGroup"] == 65534
    assert spec["replicas"] <= int(config(overlay)["STRIPEMETER_PARTITIONS"]), "idle workers"


def test_prod_replicates_for_three_brokers_and_spreads_its_pods() -> None:
    data = config("prod")
    assert data["STRIPEMETER_TOPIC_REPLICATION_FACTOR"] == "3"
    assert data["STRIPEMETER_TOPIC_MIN_INSYNC_REPLICAS"] == "2"
    assert data["STRIPEMETER_KAFKA_SESSION_TIMEOUT_SECONDS"] == "45"
    assert data["STRIPEMETER_API_PROXY_HOPS"] == "1", "behind the Ingress"
    worker = by_kind("prod", "StatefulSet")["stripemeter-worker"]
    api = by_kind("prod", "Deployment")["stripemeter-api"]
    assert worker["spec"]["replicas"] == 3 and api["spec"]["replicas"] >= 2
    # a worker restarted by a rollout comes back inside the session timeout: its clean stop fits
    assert pod_spec(worker)["terminationGracePeriodSeconds"] <= 60
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for workload in (worker, api):
        spread = pod_spec(workload)["topologySpreadConstraints"]
        labels = workload["spec"]["selector"]["matchLabels"]
        assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        assert all(c["labelSelector"]["matchLabels"] == labels for c in spread)
    # budget per process x processes within Stripe's test-mode 25 operations/s
    processes = worker["spec"]["replicas"] + api["spec"]["replicas"]
    assert float(data["STRIPEMETER_STRIPE_CALLS_PER_SECOND"]) * processes <= 25


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_memory_limit_covers_what_was_measured(overlay: str) -> None:
    (worker,) = containers(by_kind(overlay, "StatefulSet")["stripemeter-worker"])
    limit = worker["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    assert int(limit[:-2]) * 1024 >= WORKER_PEAK_MIB
    assert int(limit[:-2]) * 1024 >= 2 * int(config(overlay)["STRIPEMETER_ROCKSDB_MEMORY_MB"])


def test_dev_runs_on_one_broker() -> None:
    data = config("dev")
    assert data["STRIPEMETER_TOPIC_REPLICATION_FACTOR"] == "1"
    assert data["STRIPEMETER_TOPIC_MIN_INSYNC_REPLICAS"] == "1"
    assert by_kind("dev", "StatefulSet")["stripemeter-worker"]["spec"]["replicas"] == 1


def test_prod_has_a_disruption_budget_for_each_long_running_workload() -> None:
    budgets = by_kind("prod", "PodDisruptionBudget")
    for workload in workloads("prod"):
        if workload["kind"] == "Job":
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        matching = [
            b for b in budgets.values() if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, workload["metadata"]["name"]
        (budget,) = matching
        assert budget["spec"]["maxUnavailable"] == 1  # a drain takes one pod at a time
        assert workload["spec"]["replicas"] > 1, "a budget over one replica blocks every drain"


def _policies(kind: str) -> list[Manifest]:
    return [p for p in by_kind("prod", "NetworkPolicy").values() if kind in p["spec"]["policyTypes"]]


def _selects(policy: Manifest, labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]  # {} selects every pod of the namespace
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    expressions = selector.get("matchExpressions", [])
    assert all(e["operator"] == "In" for e in expressions)
    return all(labels.get(e["key"]) in e["values"] for e in expressions)


def _pod_labels(name: str) -> dict[str, str]:
    (workload,) = [w for w in workloads("prod") if w["metadata"]["name"] == name]
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _egress_ports(labels: dict[str, str]) -> set[int]:
    return {
        port["port"]
        for policy in _policies("Egress")
        if _selects(policy, labels)
        for rule in policy["spec"].get("egress", [])
        for port in rule.get("ports", [])
    }


def test_prod_network_policies_deny_by_default_and_allow_what_each_pod_needs() -> None:
    (deny,) = [p for p in by_kind("prod", "NetworkPolicy").values() if p["spec"]["podSelector"] == {}]
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny["spec"]
    defaults = Settings()
    for name in ("stripemeter-worker", "stripemeter-api", "stripemeter-topics-0-1-0"):
        # DNS, Kafka (plaintext or TLS listener), PostgreSQL (the init container's migrations)
        assert {53, 9092, 5432} <= _egress_ports(_pod_labels(name)), name
    for name in ("stripemeter-worker", "stripemeter-api"):
        assert 443 in _egress_ports(_pod_labels(name)), f"{name}: Stripe over HTTPS"
    assert 443 not in _egress_ports(_pod_labels("stripemeter-topics-0-1-0"))
    (stripe,) = [
        p
        for p in _policies("Egress")
        if any("ipBlock" in t for r in p["spec"].get("egress", []) for t in r["to"])
    ]
    (rule,) = stripe["spec"]["egress"]
    (block,) = [t["ipBlock"] for t in rule["to"]]
    assert block["cidr"] == "0.0.0.0/0" and "10.0.0.0/8" in block["except"], "no cluster-internal 443"

    def ingress_rules(name: str) -> list[dict[str, Any]]:
        labels = _pod_labels(name)
        return [r for p in _policies("Ingress") if _selects(p, labels) for r in p["spec"].get("ingress", [])]

    api_rules = ingress_rules("stripemeter-api")
    public = [r for r in api_rules if "from" not in r]
    assert [p["port"] for r in public for p in r["ports"]] == [defaults.api_port], "only the API port is open"
    (operator,) = [r for r in api_rules if "from" in r]
    assert [p["port"] for p in operator["ports"]] == [defaults.operator_metrics_port]
    assert operator["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    (worker_rule,) = ingress_rules("stripemeter-worker")
    assert [p["port"] for p in worker_rule["ports"]] == [defaults.worker_web_port]
    assert {"podSelector": {}} in worker_rule["from"], "from this namespace"
    assert len(worker_rule["from"]) == 2, "and from Prometheus' namespace only"
    assert not ingress_rules("stripemeter-topics-0-1-0")


def test_prod_ingress_reaches_the_api_service() -> None:
    (ingress,) = by_kind("prod", "Ingress").values()
    service = by_kind("prod", "Service")["stripemeter-api"]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_yaml_files_are_clean() -> None:
    """yamllint over every YAML file of ops and deploy (long lines allowed: alert descriptions)."""
    from yamllint import config as lint_config
    from yamllint import linter

    conf = lint_config.YamlLintConfig(
        "{extends: default, rules: {line-length: disable, document-start: disable,"
        " truthy: {check-keys: false}}}"
    )
    files = [
        ROOT / "docker-compose.yml",
        *sorted((ROOT / "ops").rglob("*.yml")),
        *sorted(K8S.rglob("*.yaml")),
    ]
    problems = [
        f"{path.relative_to(ROOT)}:{p.line}: {p.message}"
        for path in files
        for p in linter.run(path.read_text(), conf)
        if p.level == "error"
    ]
    assert not problems, "\n".join(problems)


def test_each_workload_logs_in_to_kafka_as_its_own_principal_with_settings_the_code_accepts() -> None:
    users = set()
    for workload in workloads("prod"):
        for container in pod_containers(workload):
            settings = load_settings(container_env("prod", container))
            assert settings.kafka.sasl and settings.kafka.tls, workload["metadata"]["name"]
            users.add((workload["metadata"]["name"], settings.kafka_sasl_username))
    assert sorted(users) == [
        ("stripemeter-api", "stripemeter-api"),
        ("stripemeter-topics-0-1-0", "stripemeter-admin"),
        ("stripemeter-worker", "stripemeter-worker"),
    ]


def test_a_path_outside_the_overlays_is_never_rendered() -> None:
    """Every manifest file is reachable from an overlay, or is the example Secret."""
    used: set[Path] = set()

    def walk(folder: Path) -> None:
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        used.add(folder / "kustomization.yaml")
        for entry in kustomization.get("resources", []) + [
            p["path"] for p in kustomization.get("patches", [])
        ]:
            target = (folder / entry).resolve()
            walk(target) if target.is_dir() else used.add(target)

    for overlay in OVERLAYS:
        walk(K8S / "overlays" / overlay)
    # monitoring/ (PrometheusRule, PodMonitor) needs the Prometheus Operator's CRDs: applied on its own
    files = {p.resolve() for p in K8S.rglob("*.yaml") if "monitoring" not in p.relative_to(K8S).parts}
    files -= {(K8S / "secret.example.yaml").resolve()}
    assert files <= {p.resolve() for p in used}, sorted(str(p) for p in files - used)
