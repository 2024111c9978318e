"""`stripemeter stack status` says where the API's operator listener is, when the stack lives at
another time, and finds PostgreSQL by the server's pid; commands find the stack's Stripe."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from stripemeter.domain.config import Settings
from stripemeter.tools.local.stack import app_settings, clock_note, stack_stripe, status, write_stack_stripe


def test_status_shows_the_operator_listener_beside_the_api(tmp_path: Path) -> None:
    rows = {name: address for name, _state, address, _log in status(Settings(state_dir=tmp_path))}
    assert rows["api"] == "http://127.0.0.1:3000 (operator metrics http://127.0.0.1:9464)"
    off = Settings(state_dir=tmp_path, operator_metrics_port=0)
    assert {name: address for name, _s, address, _l in status(off)}["api"] == "http://127.0.0.1:3000"


def test_status_says_when_the_stack_lives_at_another_time(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    assert clock_note(settings) is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "worker.pid").write_text(f"{os.getpid()}\n")  # a worker that runs
    (tmp_path / "run" / "clock-offset").write_text("0.0\n")
    assert clock_note(settings) is None  # started at real time
    (tmp_path / "run" / "clock-offset").write_text(f"{30 * 86400}\n")  # `demo --at` a month ahead
    note = clock_note(settings)
    assert note is not None and "+30.0 days from now" in note and "demo --at" in note


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_status_knows_postgres_by_the_servers_own_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process that launched PostgreSQL (``runuser`` as root) may be gone while the server runs."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the data directory under the state dir
    settings = Settings(state_dir=tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "postgres.pid").write_text(f"{dead_pid()}\n")  # the launcher, gone
    assert states(settings)["postgres"] == "stopped"
    (tmp_path / "postgres").mkdir()
    server = os.getpid()  # a process that runs, standing in for the postmaster
    (tmp_path / "postgres" / "postmaster.pid").write_text(f"{server}\n{tmp_path / 'postgres'}\n1700000000\n")
    assert states(settings)["postgres"] == f"running (pid {server})"
    (tmp_path / "postgres" / "postmaster.pid").write_text(f"{dead_pid()}\n")  # left by a crash
    assert states(settings)["postgres"] == "stopped"


def test_the_stacks_stripe_is_found_while_its_emulator_runs(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    assert stack_stripe(settings) is None  # no stack here
    write_stack_stripe(app_settings(settings))
    written = tmp_path / "run" / "stripe.json"
    assert written.stat().st_mode & 0o777 == 0o600  # it holds a key
    assert stack_stripe(settings) is None  # its emulator does not run
    (tmp_path / "run" / "stripe-emulator.pid").write_text(f"{os.getpid()}\n")
    local = stack_stripe(settings)
    assert local is not None
    assert local.stripe_api_base == f"http://127.0.0.1:{settings.emulator_port}"
    assert local.stripe_api_key.value == "sk_test_local_emulator"


def states(settings: Settings) -> dict[str, str]:
    return {name: state for name, state, _address, _log in status(settings)}
