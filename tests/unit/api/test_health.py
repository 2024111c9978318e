"""Which checks take the API out of its Service: only its Kafka producer (api/health.py)."""

from __future__ import annotations

import pytest

from stripemeter.api.health import Check, verdict

OK: Check = {"status": "ok"}
DOWN: Check = {"status": "down"}
DEGRADED: Check = {"status": "degraded"}
DISABLED: Check = {"status": "disabled"}


@pytest.mark.parametrize(
    "postgres, kafka, stripe, workers, expected",
    [
        (OK, OK, OK, OK, "healthy"),
        (OK, OK, DISABLED, OK, "healthy"),
        (OK, DOWN, OK, OK, "unhealthy"),
        (DOWN, DOWN, DOWN, DOWN, "unhealthy"),
        (DOWN, OK, OK, DOWN, "degraded"),  # PostgreSQL down: heartbeats unknown too
        (OK, OK, OK, DOWN, "degraded"),  # no worker heartbeat: events wait in Kafka
        (OK, OK, DEGRADED, OK, "degraded"),
        (OK, OK, OK, DEGRADED, "degraded"),
    ],
)
def test_only_kafka_makes_the_api_unready(
    postgres: Check, kafka: Check, stripe: Check, workers: Check, expected: str
) -> None:
    checks = {"postgres": postgres, "kafka": kafka, "stripe": stripe, "workers": workers}
    assert verdict(checks) == expected
