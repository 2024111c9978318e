"""`stripemeter reconcile` next to a local stack uses the stack's Stripe (its emulator) when no Stripe is
configured; with neither it says how to get one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stripemeter.cli import main
from stripemeter.cli.operate import with_stack_stripe
from stripemeter.domain.config import Secret, Settings
from stripemeter.tools.local.stack import app_settings, write_stack_stripe


def stack_with_emulator(state_dir: Path) -> Settings:
    settings = Settings(state_dir=state_dir)
    write_stack_stripe(app_settings(settings))
    (state_dir / "run" / "stripe-emulator.pid").write_text(f"{os.getpid()}\n")  # an emulator that runs
    return settings


def test_no_stripe_configured_takes_the_stacks_emulator(tmp_path: Path) -> None:
    settings = stack_with_emulator(tmp_path)
    local = with_stack_stripe(settings, quiet=True)
    assert (local.stripe_api_base, local.stripe_api_key.value) == (
        f"http://127.0.0.1:{settings.emulator_port}",
        "sk_test_local_emulator",
    )


def test_a_configured_stripe_wins_over_the_stack(tmp_path: Path) -> None:
    settings = stack_with_emulator(tmp_path).with_overrides(stripe_api_key=Secret("sk_test_mine"))
    assert with_stack_stripe(settings, quiet=True) is settings
    no_stack = Settings(state_dir=tmp_path / "elsewhere")
    assert with_stack_stripe(no_stack, quiet=True) is no_stack


def test_without_stripe_or_stack_the_cli_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("STRIPE_API_KEY", "STRIPE_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STRIPEMETER_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("STRIPEMETER_LOG_LEVEL", "INFO")
    assert main(["reconcile", "--tenant", "acme"]) == 1
    err = capsys.readouterr().err
    assert "set STRIPE_API_KEY" in err and "stripemeter stack up" in err and "STRIPEMETER_STATE_DIR" in err
