"""docker-compose.yml against the Compose specification (check-jsonschema's vendored schema), and
in step with the code, the local stack, the Prometheus and Alertmanager configs and the Grafana
provisioning; its state (Kafka's logs, PostgreSQL's data) on volumes that outlive `down`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from typing import Any

import yaml

from stripemeter.domain.config import Settings
from tests.ops.deployment import KNOWN_ENV, ROOT, check_command

COMPOSE = ROOT / "docker-compose.yml"
OURS = ("init", "stripe-emulator", "worker", "api")  # services running the stripemeter image


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def test_compose_file_matches_the_compose_specification() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_our_services_run_one_image_built_once() -> None:
    """`init` builds the image; the others run it and never look for it in a registry."""
    services = compose()["services"]
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["init"]
    assert services["init"]["build"] == "." and services["init"]["pull_policy"] == "build"
    images = {services[name]["image"] for name in OURS}
    assert images == {"stripemeter:local"}
    for name in OURS[1:]:
        assert services[name]["pull_policy"] == "never", name


def test_state_lives_on_named_volumes() -> None:
    """Kafka's log dir (the image's default is in /tmp, inside the container) and PostgreSQL's data
    directory are named volumes: `down` and `up` find the same topics, offsets and rows."""
    doc = compose()
    kafka, postgres = doc["services"]["kafka"], doc["services"]["postgres"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in kafka["volumes"]}
    assert mounts[log_dirs] in doc["volumes"], "Kafka's log dir is a named volume"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", kafka["environment"]["CLUSTER_ID"]), "a fixed KRaft cluster id"
    pg_mounts = {v.split(":")[1]: v.split(":")[0] for v in postgres["volumes"]}
    assert pg_mounts["/var/lib/postgresql/data"] in doc["volumes"]


def test_one_broker_means_one_replica() -> None:
    """The settings for a single broker: topics with one replica (the broker refuses more); the
    broker's own topics likewise."""
    services = compose()["services"]
    for name in ("init", "worker", "api"):
        env = services[name]["environment"]
        assert env["STRIPEMETER_TOPIC_REPLICATION_FACTOR"] == "1", name
        assert env["STRIPEMETER_TOPIC_MIN_INSYNC_REPLICAS"] == "1", name
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert kafka["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"


def test_our_services_use_only_settings_the_code_reads() -> None:
    services = compose()["services"]
    for name in OURS:
        service = services[name]
        check_command(service["command"])
        unknown = set(service.get("environment", {})) - KNOWN_ENV
        assert not unknown, f"{name} sets variables no code reads: {sorted(unknown)}"


def test_without_stripe_settings_the_emulator_is_used_as_by_the_local_stack() -> None:
    services = compose()["services"]
    emulator = services["stripe-emulator"]
    assert emulator["command"][-4:] == ["--host", "0.0.0.0", "--port", "12111"]
    for name in ("worker", "api"):
        env = services[name]["environment"]
        # the same key the local stack gives the emulator (stripemeter/tools/local/stack.py)
        assert env["STRIPE_API_KEY"] == "${STRIPE_API_KEY:-sk_test_local_emulator}"
        # `-`, not `:-`: an empty STRIPE_API_BASE chooses Stripe's own API
        assert env["STRIPE_API_BASE"] == "${STRIPE_API_BASE-http://stripe-emulator:12111}"
        assert services[name]["depends_on"]["stripe-emulator"] == {"condition": "service_healthy"}


def test_ports_agree_with_the_settings_and_the_prometheus_config() -> None:
    services = compose()["services"]
    defaults = Settings()
    assert services["worker"]["expose"] == [str(defaults.worker_web_port)]
    assert services["api"]["environment"]["STRIPEMETER_API_HOST"] == "0.0.0.0"
    assert services["api"]["ports"] == ["${STRIPEMETER_API_PORT:-3000}:3000"]
    assert "6066" in str(services["worker"]["healthcheck"]["test"])
    scrape = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    # Prometheus reads the API's operator listener (the drift gauges), which is exposed, not published
    operator = services["api"]["environment"]
    assert operator["STRIPEMETER_OPERATOR_METRICS_PORT"] == str(defaults.operator_metrics_port)
    assert operator["STRIPEMETER_OPERATOR_METRICS_HOST"] == "0.0.0.0"
    assert services["api"]["expose"] == [str(defaults.operator_metrics_port)]
    assert jobs["stripemeter-api"]["static_configs"][0]["targets"] == [
        f"api:{defaults.operator_metrics_port}"
    ]
    (dns,) = jobs["stripemeter-worker"]["dns_sd_configs"]
    assert dns["names"] == ["worker"] and dns["port"] == defaults.worker_web_port


def published(service: dict[str, Any]) -> list[tuple[str | None, str, str]]:
    """(host address or None for every interface, host port, container port) of each published port."""
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):  # the long syntax
            ports.append((entry.get("host_ip"), str(entry.get("published")), str(entry["target"])))
            continue
        # "[ip:]host:container": the host part may hold ${VAR:-default}, whose ':' is not a separator
        parts = re.findall(r"\$\{[^}]*\}|[^:]+", str(entry))
        assert len(parts) in (2, 3), entry
        ports.append((parts[0], parts[1], parts[2]) if len(parts) == 3 else (None, parts[0], parts[1]))
    return ports


def test_only_the_api_is_published_beyond_loopback() -> None:
    """Whatever answers without a key (the Stripe emulator's control routes, Prometheus' lifecycle
    API, Grafana's default admin) is published on 127.0.0.1 only; the API needs a key on /v1."""
    services = compose()["services"]
    assert published(services["stripe-emulator"]) == [
        ("127.0.0.1", "${STRIPEMETER_EMULATOR_PORT:-12111}", "12111")
    ]
    for name, service in services.items():
        for host, _port, _target in published(service):
            assert name == "api" or host == "127.0.0.1", f"{name} publishes a port beyond loopback"
    assert {name for name, service in services.items() if published(service)} == {
        "api",
        "stripe-emulator",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    for name in ("kafka", "postgres", "worker"):
        assert "ports" not in services[name], name


def test_monitoring_profile_mounts_the_rules_and_the_dashboards() -> None:
    services = compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == ["monitoring"] and grafana["profiles"] == ["monitoring"]
    assert "./ops/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert prometheus["ports"] == ["127.0.0.1:${PROMETHEUS_PORT:-9090}:9090"]
    assert "./ops/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./ops/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert grafana["ports"] == ["127.0.0.1:${GRAFANA_PORT:-3001}:3000"]
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_USER"].endswith(":-admin}")
    assert env["GF_SECURITY_ADMIN_PASSWORD"].endswith(":-admin}")
    for volume in prometheus["volumes"] + grafana["volumes"]:
        if volume.startswith("./"):
            assert (ROOT / volume.split(":")[0]).is_dir(), volume


def test_compose_kafka_is_the_local_stacks_version() -> None:
    image = compose()["services"]["kafka"]["image"]
    tag = re.fullmatch(r"apache/kafka:(.+)", image)
    assert tag is not None, image
    assert tag.group(1) == Settings().kafka_version


def test_prometheus_sends_its_alerts_to_the_compose_alertmanager() -> None:
    services = compose()["services"]
    alertmanager = services["alertmanager"]
    assert alertmanager["profiles"] == ["monitoring"]
    assert alertmanager["ports"] == ["127.0.0.1:${ALERTMANAGER_PORT:-9093}:9093"]
    assert "./ops/alertmanager:/etc/alertmanager:ro" in alertmanager["volumes"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    assert "alertmanager" in services["prometheus"]["depends_on"]
    config = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    (target_group,) = config["alerting"]["alertmanagers"]
    assert target_group["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    routes = yaml.safe_load((ROOT / "ops" / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"] for r in routes["receivers"]}
    assert routes["route"]["receiver"] in receivers
    assert all(r["receiver"] in receivers for r in routes["route"].get("routes", []))
    amtool = shutil.which("amtool")
    if amtool:  # Debian's prometheus-alertmanager: the full check where it is installed
        done = subprocess.run(
            [amtool, "check-config", str(ROOT / "ops" / "alertmanager" / "alertmanager.yml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
