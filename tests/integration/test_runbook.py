"""ops/RECONCILIATION.md, run as written: every bash block in order, against a stack (worker, API, Stripe
emulator) holding real drift - too-late events and a foreign meter event - and ending in parity."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from stripemeter.domain.config import Settings, settings_env
from stripemeter.tools.demo import EVENT_NAME, Demo, send, usage
from stripemeter.tools.local.stack import app_settings, down, up
from tests.integration.harness import free_port, isolated_settings, wait_until
from tests.timematrix import clock_offset, instants

RUNBOOK = Path(__file__).resolve().parents[2] / "ops" / "RECONCILIATION.md"
# the emulator's summaries are immediate: a short settle time is enough, and the playbook waits it out
SETTLE_SECONDS = 3.0


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def run_block(block: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", block], env=env, capture_output=True, text=True, timeout=180
    )


@pytest.mark.parametrize("at", instants("first-hour-of-a-year"))
def test_every_runbook_command_works_and_the_playbook_ends_in_parity(
    stack: Settings, tmp_path: Path, at: datetime | None
) -> None:
    settings = isolated_settings(stack, tmp_path).with_overrides(
        emulator_port=free_port(),
        auth_enabled=True,
        clock_offset_seconds=clock_offset(at),
        reconcile_settle_seconds=SETTLE_SECONDS,
    )
    log: list[str] = []
    up(settings, log.append)
    app = app_settings(settings)
    tenant = f"rb-{uuid.uuid4().hex[:6]}"
    try:
        demo = Demo(app, log.append, tenant)
        demo.setup_stripe()
        now = app.clock.utc()
        customers = ("acme-42", "globex-7")
        fresh = [
            usage(tenant, c, now - timedelta(minutes=i), 10, f"{c}-{i}") for c in customers for i in range(3)
        ]
        asyncio.run(send(app, [fresh]))
        expected = 60
        wait_until(lambda: demo.delivered(expected), "usage pushed", timeout=90)
        old = (now - timedelta(hours=60)).replace(minute=0, second=0, microsecond=0)
        late = [usage(tenant, "acme-42", old + timedelta(minutes=i), 5, f"late-{i}") for i in range(4)]
        asyncio.run(send(app, [late]))
        expected += 20
        wait_until(lambda: demo._late_in_ledger() == 4, "too-late events in the ledger", timeout=90)
        # a foreign meter event in Stripe, two hours ago, for globex-7: beyond epsilon
        customer = {
            c["customerRef"]: c["stripeCustomerId"]
            for c in demo.api.every(f"/v1/customers/{tenant}", "customers")
        }
        demo.stripe.call(
            "POST",
            "/v1/billing/meter_events",
            form={"event_name": EVENT_NAME, "payload[stripe_customer_id]": customer["globex-7"],
                  "payload[value]": "50", "timestamp": str(int(now.timestamp()) - 7200)},
        )  # fmt: skip
        time.sleep(app.reconcile_settle_seconds + 1)  # the usage is settled: what differs now is drift

        env = {
            **os.environ,
            **settings_env(app),
            "API": f"http://{app.api_host}:{app.api_port}",
            "TENANT": tenant,
            "METRIC": "requests",
            "AUTH": f"Authorization: Bearer {(app.state_dir / 'api-key').read_text().strip()}",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        blocks = bash_blocks(RUNBOOK.read_text())
        assert len(blocks) >= 8
        outputs = []
        for block in blocks:
            deadline = time.monotonic() + (90 if block.startswith("# until parity") else 0)
            while True:
                result = run_block(block, env)
                if result.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(3)
            assert result.returncode == 0, (
                f"{block}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
            outputs.append(result.stdout)
        story = "\n".join(outputs)
        assert "stripe_higher" in story and "late_events" in story  # step 2 saw both
        assert "4 too-late events to count" in story  # the dry-run
        assert '"status": "parity"' in outputs[-1]
        # the usage may span two periods (the late events fall in the previous month early in a month)
        demo.note_usage([*fresh, *late])
        summaries = demo.show_summary()
        assert all(s["status"] == "parity" for s in summaries), "\n".join(log)
        assert sum(s["totals"]["local"] for s in summaries) == expected
        assert sum(s["totals"]["stripe"] for s in summaries) == expected
    finally:
        down(settings, log.append)
