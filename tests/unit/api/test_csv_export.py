"""CSV downloads cannot carry spreadsheet formulas (CSV injection)."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from stripemeter.api.csv_export import csv_text, safe_cell
from stripemeter.api.reconciliation import CSV_COLUMNS, csv_page


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("acme-42", "acme-42"),
        ("a=b", "a=b"),
        ("", ""),
        (-5, -5),
        (-0.25, -0.25),
        (None, None),
    ],
)
def test_text_that_would_start_a_formula_is_quoted(value: object, expected: object) -> None:
    assert safe_cell(value) == expected


def test_every_cell_of_the_text_is_made_safe() -> None:
    text = csv_text(["a", "=b"], [["=1", -3, "ok"]])
    assert list(csv.reader(io.StringIO(text))) == [["a", "'=b"], ["'=1", "-3", "ok"]]


def item(customer: str) -> dict[str, Any]:
    return {
        "customerRef": customer, "local": 10, "stripe": 12, "diffAbs": -2, "diffPct": 0.166667,
        "status": "drift", "action": "flagged", "inFlight": 0, "causes": [{"code": "stray_in_stripe"}],
        "checkedAt": "2026-11-20T14:00:00.000Z",
    }  # fmt: skip


def test_the_reconciliation_summary_csv_escapes_customer_refs() -> None:
    """A customerRef is any 1-255 characters a producer sent: it must not run in the operator's sheet."""
    text = csv_page([item("=cmd|' /C calc'!A0"), item("@x"), item("+1"), item("-1"), item("acme")], True)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["customerRef"] for r in rows] == ["'=cmd|' /C calc'!A0", "'@x", "'+1", "'-1", "acme"]
    assert rows[0]["diffAbs"] == "-2"  # numbers stay numbers
    assert list(rows[0]) == list(CSV_COLUMNS)


def test_a_later_csv_page_has_no_header_and_continues_the_rows() -> None:
    first, later = csv_page([item("a")], True), csv_page([item("b")], False)
    rows = list(csv.DictReader(io.StringIO(first + later)))
    assert [r["customerRef"] for r in rows] == ["a", "b"]
