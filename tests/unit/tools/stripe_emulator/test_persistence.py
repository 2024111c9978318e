"""The emulator keeps its customers, meters and meter events across a restart (`stack down`, `up`), and
`seed` makes a meter and a customer once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

from stripemeter.tools.local.procs import free_port, port_open
from stripemeter.tools.stripe_emulator import EmulatorState, ManualClock
from stripemeter.tools.stripe_emulator.persistence import load, save
from stripemeter.tools.stripe_emulator.seed import seed

START = 1_749_945_600 + 12 * 3600  # a UTC noon


def test_a_saved_account_is_the_same_account_once_loaded(tmp_path: Path) -> None:
    before = EmulatorState(clock=ManualClock(START), ops_per_second=0)
    meter = before.create_meter(
        {
            "display_name": "API requests",
            "event_name": "api_requests",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
        }
    )
    customer = before.create_customer({"email": "alice@example.com"})
    for n, value in enumerate(("3", "5")):
        before.record_meter_event(
            {
                "event_name": "api_requests",
                "identifier": f"push-{n}",
                "payload": {"stripe_customer_id": customer["id"], "value": value},
                "timestamp": str(START - 60),
            }
        )
    save(before, tmp_path / "account.json")

    after = EmulatorState(clock=ManualClock(START + 10), ops_per_second=0)
    assert load(after, tmp_path / "account.json")
    assert after.get_meter(meter["id"]) == meter and after.get_customer(customer["id"]) == customer
    assert after.meter_total(meter["id"], customer["id"], START - 3600, START) == 8
    assert [e.identifier for e in after.meter_events(meter["id"])] == ["push-0", "push-1"]
    assert not load(EmulatorState(), tmp_path / "none.json")  # no file yet: an empty account


def start_emulator(port: int, state_file: Path, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "stripemeter", "stripe-emulator", "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*argv, "--state-file", str(state_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", port):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


def test_the_emulator_process_keeps_what_seed_made_across_a_stop_and_start(tmp_path: Path) -> None:
    port, state_file = free_port(), tmp_path / "stripe-emulator.json"
    url = f"http://127.0.0.1:{port}"
    proc = start_emulator(port, state_file, tmp_path / "emulator.log")
    try:
        first = seed(url)
        assert first.meter_created and first.customer_created
        again = seed(url)
        assert (again.meter_id, again.customer_id) == (first.meter_id, first.customer_id)
        assert not again.meter_created and not again.customer_created
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # what `stack down` sends
        assert proc.wait(30) == 0
    saved = orjson.loads(state_file.read_bytes())
    assert [m["id"] for m in saved["meters"]] == [first.meter_id]

    proc = start_emulator(port, state_file, tmp_path / "emulator.log")
    try:
        request = urllib.request.Request(
            f"{url}/v1/billing/meters/{first.meter_id}", headers={"Authorization": "Bearer sk_test_x"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert orjson.loads(answer.read())["event_name"] == "api_requests"
        back = seed(url)
        assert (back.meter_id, back.customer_id, back.meter_created) == (
            first.meter_id,
            first.customer_id,
            False,
        )
        assert back.shell()[0].startswith(f"STRIPE_METER={first.meter_id}  # meter 'api_requests'")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
