"""A reconciliation run's report, pure parts: the findings in every form they are told in (the API's
items, the stored rows, the drift records) and the summary."""

from __future__ import annotations

from datetime import UTC, datetime

from stripemeter.core.reconcile_compare import Item, Status, Verdict
from stripemeter.domain import periods
from stripemeter.schemas.drift import encode_drift
from stripemeter.services.reconciliation.act import Action, Outcome
from stripemeter.services.reconciliation.check import Checked
from stripemeter.services.reconciliation.report import findings, proofs, status_of, summary, totals
from stripemeter.services.reconciliation.request import RunRequest
from tests.unit.schemas.test_drift import DRIFT, PUBLISHED

AT = datetime(2026, 11, 20, 15, 3, 11, 250001, tzinfo=UTC)
NOVEMBER = periods.period("2026-11")
H0 = int(datetime(2026, 11, 20, 14, tzinfo=UTC).timestamp())


def outcome(customer: str, status: Status, action: Action, local: int, stripe: int) -> Outcome:
    diff = abs(local - stripe)
    hours = [{"bucket": H0, "local": local, "stripe": stripe, "diff": local - stripe}] if diff else []
    causes = list(DRIFT.causes) if status == "drift" else []
    verdict = Verdict(local, stripe, diff, diff / max(local, stripe), status, 0, causes, hours, [])
    return Outcome(Checked(Item("demo", "requests", customer, "sum"), verdict, NOVEMBER), action, [])


def test_an_item_beyond_parity_is_published_as_the_drift_vector() -> None:
    hours = [{"bucket": H0, "local": 100, "stripe": 90, "diff": 10}]
    verdict = Verdict(1000, 990, 10, 0.01, "drift", 0, DRIFT.causes, hours, [])
    checked = Checked(Item("demo", "requests", "acme 42", "sum"), verdict, NOVEMBER)
    found = findings("rec_1", "2026-11", [Outcome(checked, "replay", [])], AT)
    assert found.drift == [DRIFT]
    assert encode_drift(found.drift[0]) == PUBLISHED


def test_only_a_settled_parity_with_nothing_to_do_is_recorded_as_proven() -> None:
    """Every item read gets its read time; only settled parity keeps the digest it was proven on."""
    at_parity = outcome("acme", "parity", "none", 50, 50)
    waiting = outcome("bolt", "parity", "wait", 50, 50)  # parity with hours in flight
    unsettled = outcome("cafe", "parity", "none", 50, 50)
    unsettled.checked.verdict.settled = False
    adjusted = outcome("dune", "within_epsilon", "adjusted", 1000, 999)
    unmapped = outcome("echo", "parity", "none", 7, 7)
    unmapped.checked.item.missing.append("customer mapping")
    outcomes = [at_parity, waiting, unsettled, adjusted, unmapped]
    digests = {
        ("requests", o.checked.item.customer_ref): f"d-{o.checked.item.customer_ref}" for o in outcomes
    }
    rows = proofs("2026-11", outcomes, digests, AT)
    assert [(r.customer_ref, r.period, r.read_at, r.digest) for r in rows] == [
        ("acme", "2026-11", AT, "d-acme"),
        ("bolt", "2026-11", AT, None),
        ("cafe", "2026-11", AT, None),
        ("dune", "2026-11", AT, None),
        ("echo", "2026-11", AT, None),
    ]


def test_findings_in_every_form() -> None:
    adjusted = {
        "adjustmentId": "smrec_x",
        "metric": "requests",
        "customerRef": "bolt",
        "bucket": "b",
        "value": 1,
    }
    outcomes = [
        outcome("acme", "parity", "none", 50, 50),
        Outcome(outcome("bolt", "within_epsilon", "adjusted", 1000, 999).checked, "adjusted", [adjusted]),
        outcome("cafe", "drift", "replay", 100, 90),
    ]
    found = findings("rec_1", "2026-11", outcomes, AT)
    assert [d.customer_ref for d in found.drift] == ["bolt", "cafe"]  # parity is not published
    assert found.adjusted == [adjusted]
    assert dict(found.counts) == {"parity": 1, "within_epsilon": 1, "drift": 1, "adjusted": 1}
    row = found.rows[1]
    assert (row.run_id, row.tenant_id, row.metric, row.customer_ref, row.period) == (
        "rec_1", "demo", "requests", "bolt", "2026-11",
    )  # fmt: skip
    assert (row.period_start, row.period_end, row.checked_at) == (NOVEMBER.start, NOVEMBER.end, AT)
    assert (row.local, row.stripe, row.diff_abs, row.status, row.action) == (
        1000,
        999,
        1,
        "within_epsilon",
        "adjusted",
    )
    assert row.diff_pct == 1 / 1000  # stored unrounded
    assert row.hours == [{"bucket": "2026-11-20T14:00:00Z", "local": 1000, "stripe": 999, "diff": 1}]
    wire = found.items[2]
    assert wire == {
        "metric": "requests",
        "customerRef": "cafe",
        "periodStart": "2026-11-01T00:00:00Z",
        "periodEnd": "2026-12-01T00:00:00Z",
        "local": 100,
        "stripe": 90,
        "diffAbs": 10,
        "diffPct": 0.1,
        "status": "drift",
        "action": "replay",
        "inFlight": 0,
        "causes": DRIFT.causes,
        "hours": [{"bucket": "2026-11-20T14:00:00Z", "local": 100, "stripe": 90, "diff": 10}],
        "checkedAt": "2026-11-20T15:03:11.250001Z",
    }


def test_the_summary_is_the_worst_status_and_the_totals() -> None:
    outcomes = [outcome("acme", "parity", "none", 50, 50), outcome("cafe", "drift", "replay", 100, 90)]
    found = findings("rec_1", "2026-11", outcomes, AT)
    report = summary("rec_1", RunRequest("demo", "requests"), "2026-11", 0.005, found, 3, 1.23456)
    assert report["status"] == "drift"
    assert report["totals"] == {"local": 150, "stripe": 140, "diffAbs": 10, "diffPct": round(10 / 150, 6)}
    assert report["flagged"] == [{"metric": "requests", "customerRef": "cafe", "causes": ["stripe_missing"]}]
    assert report["period"] == {
        "name": "2026-11",
        "start": "2026-11-01T00:00:00Z",
        "end": "2026-12-01T00:00:00Z",
    }
    assert (report["runId"], report["stripeCalls"], report["durationSeconds"]) == ("rec_1", 3, 1.235)


def test_status_of_is_the_worst() -> None:
    assert status_of([]) == "parity"
    assert status_of(["parity", "within_epsilon"]) == "within_epsilon"
    assert status_of(["within_epsilon", "drift", "parity"]) == "drift"
    assert totals([])["diffPct"] == 0.0
