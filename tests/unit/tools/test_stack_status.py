"""`stripemeter stack status` says where the API's operator listener is."""

from __future__ import annotations

from pathlib import Path

from stripemeter.domain.config import Settings
from stripemeter.tools.local.stack import status


def test_status_shows_the_operator_listener_beside_the_api(tmp_path: Path) -> None:
    rows = {name: address for name, _state, address, _log in status(Settings(state_dir=tmp_path))}
    assert rows["api"] == "http://127.0.0.1:3000 (operator metrics http://127.0.0.1:9464)"
    off = Settings(state_dir=tmp_path, operator_metrics_port=0)
    assert {name: address for name, _s, address, _l in status(off)}["api"] == "http://127.0.0.1:3000"
