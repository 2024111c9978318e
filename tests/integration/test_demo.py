"""The README's demo command tells the whole story and ends in parity (on isolated ports and topics)."""

from __future__ import annotations

from pathlib import Path

from stripemeter.config import Settings
from stripemeter.demo import run_demo
from stripemeter.local.stack import down
from tests.integration.harness import free_port, isolated_settings


def test_demo_ends_in_parity(stack: Settings, tmp_path: Path) -> None:
    settings = isolated_settings(stack, tmp_path).with_overrides(emulator_port=free_port())
    lines: list[str] = []
    try:
        assert run_demo(settings, lines.append) == 0, "\n".join(lines)
    finally:
        down(settings, lines.append)
    story = "\n".join(lines)
    assert "status DRIFT" in story and "not_yet_pushed" in story  # the outage, seen by reconciliation
    assert "late_events (3 events, total 15)" in story  # too-late events waiting for a replay
    assert "dry-run: " in story and "applied=False" in story and "(delta 0), applied=True" in story
    assert "aligned acme-42" in story and "== PARITY" in story
