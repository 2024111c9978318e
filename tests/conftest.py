"""Markers every test gets from where it lives, and the record of failures CI's rerun policy reads."""

from __future__ import annotations

import os

import pytest

# CI (.ci/run) names a file here; each failed test is appended as "<kind> <node id>", kind being
# `exactly_once` for the exactly-once and fault tests (never rerun: one failure is a failure) and
# `other` for the rest (rerun once, and named loudly when the rerun passes).
FAILURES_FILE_ENV = "STRIPEMETER_TEST_FAILURES"
# ./dev soak sets a fresh seed per round (tests/integration/workload.py: round_seed)
SEED_ENV = "STRIPEMETER_TEST_SEED"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.integration)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get(FAILURES_FILE_ENV)
    if path and report.failed:
        kind = "exactly_once" if "exactly_once" in report.keywords else "other"
        with open(path, "a") as failures:
            failures.write(f"{kind} {report.nodeid}\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    seed = os.environ.get(SEED_ENV)
    if seed and terminalreporter.stats.get("failed"):
        terminalreporter.write_line(f"failed with {SEED_ENV}={seed}: set it again to replay this round")
