"""Pages of a list: limit, cursor, nextCursor (api/pages.py)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from stripemeter.api.errors import ApiError
from stripemeter.api.pages import PageRequest, decode_cursor, encode_cursor, page

KEY = (datetime, str, int)
AT = datetime(2027, 1, 31, 23, 59, 59, 123456, tzinfo=UTC)


def test_a_cursor_holds_its_key_exactly() -> None:
    assert decode_cursor(encode_cursor((AT, "usage.events", 7)), KEY) == (AT, "usage.events", 7)


def _cursor(values: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode()


@pytest.mark.parametrize(
    "text",
    [
        "not base64 !",
        base64.urlsafe_b64encode(b"{not json").decode(),
        _cursor({"a": 1}),
        _cursor([AT.isoformat(), "t"]),  # too short
        _cursor(["2027-01-31T23:59:59", "t", 1]),  # no offset
        _cursor([AT.isoformat(), 5, 1]),  # a number for a string
        _cursor([AT.isoformat(), "t", True]),  # a boolean is no integer
        _cursor([AT.isoformat(), "t\x00", 1]),  # PostgreSQL text cannot hold NUL
    ],
)
def test_anything_else_is_a_400_naming_cursor(text: str) -> None:
    with pytest.raises(ApiError) as info:
        decode_cursor(text, KEY)
    assert (info.value.status, info.value.field) == (400, "cursor")


def test_a_page_has_a_next_cursor_only_when_a_row_lies_beyond_it() -> None:
    rows = [{"k": i} for i in range(4)]
    asked = PageRequest(3, None)
    shown, cursor = page(rows, asked, lambda r: (r["k"],))
    assert shown == rows[:3] and cursor is not None
    assert decode_cursor(cursor, (int,)) == (2,)
    assert page(rows[:3], asked, lambda r: (r["k"],)) == (rows[:3], None)  # exactly full: the last page
