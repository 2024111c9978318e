"""Prometheus for real: it scrapes a running stack (API and worker) with the project's alert rules
(``for:`` shortened), sees the drift alert fire on real drift, and sees it resolve once the
runbook's remedy (replay, then aligning Stripe) has brought the item back to parity."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from stripemeter.domain.config import Settings
from stripemeter.tools.demo import EVENT_NAME, Demo, send, usage
from stripemeter.tools.local.stack import app_settings, down, up
from tests.integration.harness import free_port, isolated_settings, wait_until

RULES = Path(__file__).resolve().parents[2] / "ops" / "prometheus" / "alerts.yml"
DRIFT_ALERT = "StripemeterDriftAboveEpsilon"


def shortened(rules: str) -> str:
    """The project's rules with every ``for:`` at 1 s, so the test need not wait minutes."""
    return re.sub(r"(?m)^(\s*for:\s*)\S+", r"\g<1>1s", rules)


def prometheus_config(api: str, worker: str, rules: Path) -> str:
    return json.dumps(  # JSON is YAML
        {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": "stripemeter-api", "static_configs": [{"targets": [api]}]},
                {"job_name": "stripemeter-worker", "static_configs": [{"targets": [worker]}]},
            ],
        }
    )


def alerts(base: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{base}/api/v1/alerts", timeout=5) as response:
        found: list[dict[str, Any]] = json.loads(response.read())["data"]["alerts"]
        return found


def drift_alert(base: str, tenant: str, customer: str) -> dict[str, Any] | None:
    for alert in alerts(base):
        labels = alert["labels"]
        if (
            labels.get("alertname") == DRIFT_ALERT
            and labels.get("tenant") == tenant
            and labels.get("customer") == customer
        ):
            return alert
    return None


def test_drift_alert_fires_on_real_drift_and_resolves_after_the_remedy(
    stack: Settings, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is needed: apt-get install -y prometheus (.ci/run installs it)"
    # the emulator's summaries are immediate: a short settle time is enough, and the test waits it out
    settings = isolated_settings(stack, tmp_path).with_overrides(
        emulator_port=free_port(), reconcile_settle_seconds=3.0
    )
    log: list[str] = []
    up(settings, log.append)
    app = app_settings(settings)
    prometheus = None
    try:
        tenant = f"pm-{uuid.uuid4().hex[:6]}"
        demo = Demo(app, log.append, tenant)
        demo.setup_stripe()
        now = app.clock.utc()
        hour = now.replace(minute=0, second=0, microsecond=0)  # all in one hour: one period, any date
        events = [
            usage(tenant, "acme-42", max(hour, now - timedelta(minutes=i)), 10, f"e{i}") for i in range(5)
        ]
        demo.note_usage(events)
        asyncio.run(send(app, [events]))
        wait_until(lambda: demo.delivered(50), "usage pushed")
        customer = demo.api.call("GET", f"/v1/customers/{tenant}")["customers"][0]["stripeCustomerId"]
        demo.stripe.call(  # a foreign meter event: Stripe 20 % above what was counted
            "POST",
            "/v1/billing/meter_events",
            form={"event_name": EVENT_NAME, "payload[stripe_customer_id]": customer, "payload[value]": "10",
                  "timestamp": str(int(hour.timestamp()))},
        )  # fmt: skip

        rules = tmp_path / "alerts.yml"
        rules.write_text(shortened(RULES.read_text()))
        config = tmp_path / "prometheus.yml"
        config.write_text(
            prometheus_config(  # the API's operator listener: the drift gauges name tenants and customers
                f"{app.operator_metrics_host}:{app.operator_metrics_port}",
                f"127.0.0.1:{app.worker_web_port}",
                rules,
            )
        )
        port = free_port()
        prometheus = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=(tmp_path / "prometheus.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        time.sleep(app.reconcile_settle_seconds + 1)
        (report,) = demo.reconcile()
        assert {i["customerRef"]: i["status"] for i in report["items"]}["acme-42"] == "drift"

        wait_until(lambda: (a := drift_alert(base, tenant, "acme-42")) is not None and a["state"] == "firing",
             "the drift alert to fire")  # fmt: skip

        # the runbook's remedy: a replay finds nothing missing locally; then Stripe is aligned
        assert demo.replay("apply")["totals"]["delta"] == 0
        demo.reconcile(align="all")
        wait_until(lambda: demo.reconcile()[0]["status"] == "parity", "parity", timeout=60)
        wait_until(lambda: drift_alert(base, tenant, "acme-42") is None, "the drift alert to resolve")
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(30)
        down(settings, log.append)
