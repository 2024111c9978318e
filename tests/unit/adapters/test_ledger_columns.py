"""The ledger SQL's column list is generated from the ledger item's definition."""

from __future__ import annotations

from stripemeter.adapters.postgres.ledger import (
    INSERT_FROM_LEDGER,
    LEDGER_FIELD_TYPES,
    UPSERT_WATERMARKS,
    json_array_field,
    ledger_item_columns,
)
from stripemeter.schemas.ledger_items import WIRE_FIELDS, position


def test_every_field_of_a_ledger_item_is_read_at_its_position_under_its_name() -> None:
    assert set(LEDGER_FIELD_TYPES) == set(WIRE_FIELDS)
    columns = ledger_item_columns("e").split(",\n       ")
    assert columns == [
        f"{json_array_field('e', position(name), LEDGER_FIELD_TYPES[name])} AS {name}" for name in WIRE_FIELDS
    ]
    assert columns[position("source_offset")] == "(e->>11)::bigint AS source_offset"  # today's wire array
    assert columns[position("key_derived")] == "e->>7 IN ('1', 'true') AS key_derived"
    assert columns[position("meta")] == "nullif(e->9, 'null'::jsonb) AS meta"


def test_the_insert_and_the_watermarks_read_the_generated_columns() -> None:
    for sql in (INSERT_FROM_LEDGER, UPSERT_WATERMARKS):
        assert ledger_item_columns("e") in sql
