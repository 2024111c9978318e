"""The README's five-minute tour runs as written: its shell blocks, in order, on a local stack of its own.

The blocks run with bash from the repository's root, one shell's variables carried from block to block
(as in the one shell the tour is pasted into). Only what places the tour on this test's own stack is
rewritten: the API's and the emulator's addresses, the state dir (`.stack/`), and the tenant (`acme`, a
new one each run: the suite's database outlives runs, and a customer once mapped to one Stripe customer
cannot be mapped to another). The reading blocks run again until their output shows what the tour says
(the pipeline takes a moment), the others once.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from stripemeter.domain.config import Settings, settings_env
from stripemeter.tools.local.stack import down
from tests.integration.harness import free_port, isolated_settings

ROOT = Path(__file__).resolve().parents[2]


def tour_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"<!-- tour -->\n(.*?)<!-- /tour -->", readme, re.S)
    assert section, "README.md has a tour section between <!-- tour --> and <!-- /tour -->"
    return re.findall(r"```bash\n(.*?)```", section.group(1), re.S)


class Shell:
    """One shell's variables across blocks: each block runs in bash with `set -a` (every variable it
    sets is exported) and hands its environment to the next."""

    def __init__(self, settings: Settings, tmp: Path, rewrites: dict[str, str]) -> None:
        self.env = {**os.environ, **settings_env(settings)}
        self.env.pop("STRIPEMETER_API_KEY", None)
        self.saved = tmp / "shell.env"
        self.rewrites = rewrites

    def run(self, block: str) -> str:
        for old, new in self.rewrites.items():
            block = block.replace(old, new)
        script = f"set -ea\n{block}\nenv -0 > '{self.saved}'\n"
        done = subprocess.run(
            ["bash", "-c", script], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{block}\nexit {done.returncode}:\n{done.stdout}\n{done.stderr}"
        self.env = dict(item.split("=", 1) for item in self.saved.read_text().split("\0") if "=" in item)
        return done.stdout

    def until(self, block: str, shows: Callable[[str], bool], timeout: float = 60) -> str:
        """Run a reading block again until its output ``shows`` what the tour says."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(block)
            if shows(out) or time.monotonic() > deadline:
                assert shows(out), f"after {timeout:.0f} s:\n{block}\n{out}"
                return out
            time.sleep(0.5)


def test_the_readme_tour_runs_as_written(stack: Settings, tmp_path: Path) -> None:
    settings = isolated_settings(stack, tmp_path).with_overrides(emulator_port=free_port(), auth_enabled=True)
    tenant = f"tour{uuid.uuid4().hex[:8]}"
    shell = Shell(
        settings,
        tmp_path,
        {
            "http://127.0.0.1:3000": f"http://127.0.0.1:{settings.api_port}",
            "127.0.0.1:12111": f"127.0.0.1:{settings.emulator_port}",
            ".stack/": f"{settings.state_dir}/",
            "acme": tenant,
        },
    )
    setup, produce, count, stripe, replay = tour_blocks()
    try:
        out = shell.run(setup)
        assert "to call the API from this shell: export STRIPEMETER_API_KEY=" in out
        assert (
            '"meterCheck":{"status":"ok"' in out
            and f'"stripeCustomerId":"{shell.env["STRIPE_CUSTOMER"]}"' in out
        )
        assert (
            shell.env["STRIPE_METER"].startswith("mtr_") and shell.env["STRIPE_METER_EVENT"] == "api_requests"
        )

        out = shell.run(produce)
        assert '"accepted":1,"rejected":0' in out and "sent 1 message(s)" in out

        out = shell.until(count, lambda out: '"total":3}' in out and '"outcome":"late"' in out)
        assert '"outcome":"counted"' in out and '"idempotencyKeyDerived":false' not in out  # HTTP as Kafka
        out = shell.until(stripe, lambda out: '"value":"3"' in out and '"status":"parity"' in out)

        out = shell.run(replay)
        dry_run, applied = out.split("(apply)")
        assert "1 too-late events to count" in dry_run and "dry-run: nothing changed" in dry_run
        assert "delta 5 in 1 counters" in applied and "applied: the counters show the change" in applied
        apply = next(line for line in replay.splitlines() if "--apply" in line)
        assert ", delta 0 in " in shell.run(apply)  # apply again: counted once

        shell.until(count, lambda out: '"total":8}' in out)
        out = shell.until(stripe, lambda out: '"value":"5"' in out and '"status":"parity"' in out)
        assert '"value":"3"' in out

        # the stack stops and starts again: the emulator still has the meter and the customer
        meter, customer = shell.env["STRIPE_METER"], shell.env["STRIPE_CUSTOMER"]
        shell.run("./dev stripemeter stack down")
        out = shell.run(setup)
        assert (shell.env["STRIPE_METER"], shell.env["STRIPE_CUSTOMER"]) == (meter, customer)
        shell.until(stripe, lambda out: '"value":"5"' in out and '"status":"parity"' in out)
    finally:
        down(settings, lambda _: None)
