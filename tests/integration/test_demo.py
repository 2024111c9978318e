"""The README's demo command tells the whole story, ends in parity and at a proven invoice (on
isolated ports and topics), with API keys on, and no secret in any log of the run."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from stripemeter.domain.auth import split_token
from stripemeter.domain.config import Settings
from stripemeter.tools.demo import run_demo
from stripemeter.tools.local.stack import app_settings, down
from tests.integration.harness import free_port, isolated_settings
from tests.timematrix import clock_offset, instants


def secret_of(api_key: str) -> str:
    """The key's secret (it may hold underscores itself)."""
    parts = split_token(api_key)
    assert parts is not None, "the stack's key is well formed"
    return parts[1]


@pytest.mark.parametrize("at", instants())
def test_demo_ends_in_parity(stack: Settings, tmp_path: Path, at: datetime | None) -> None:
    settings = isolated_settings(stack, tmp_path).with_overrides(
        emulator_port=free_port(), auth_enabled=True, clock_offset_seconds=clock_offset(at)
    )
    lines: list[str] = []
    try:
        assert run_demo(settings, lines.append) == 0, "\n".join(lines)
        api_key = (settings.state_dir / "api-key").read_text().strip()
    finally:
        down(settings, lines.append)
    # no secret in any log of the full run: the API key, the Stripe key, the database password
    logs = "\n".join(
        [*lines, *(p.read_text(errors="replace") for p in (settings.state_dir / "logs").glob("*.log"))]
    )
    for secret in (
        api_key,
        secret_of(api_key),
        app_settings(settings).stripe_api_key.value,
        "stripemeter:stripemeter@",
    ):
        assert secret not in logs
    story = "\n".join(lines)
    assert "status DRIFT" in story and "not_yet_pushed" in story  # the outage, seen by reconciliation
    assert "late_events (3 events, total 15)" in story  # too-late events waiting for a replay
    assert "dry-run: " in story and "applied=False" in story and "(delta 0), applied=True" in story
    assert "aligned acme-42" in story and "== PARITY" in story
    # the cycle ends at an invoice: held, then finalized with the exact quantity and its proof
    assert "the guard holds it" in story and "== INVOICE PROVEN" in story
    assert "invoice quantity 506" in story
