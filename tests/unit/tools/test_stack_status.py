"""`stripemeter stack status` says where the API's operator listener is, and when the stack lives at
another time."""

from __future__ import annotations

import os
from pathlib import Path

from stripemeter.domain.config import Settings
from stripemeter.tools.local.stack import clock_note, status


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
