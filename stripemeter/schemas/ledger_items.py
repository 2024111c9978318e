"""The ledger item: one event's outcome in the meter, for the PostgreSQL ledger.

On the wire a ledger item is the outcome followed by the event's keyed item, as one flat JSON array
(``[outcome, *keyed item]``); the checkpoint packs many into one ledger record after the record
format's version (``[2, item, ...]``, see ``stripemeter/schemas/versions.py``). The sink never
builds them in Python: PostgreSQL unpacks the arrays with a column list generated from
``WIRE_FIELDS`` (``stripemeter/adapters/postgres/ledger.py``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from stripemeter.schemas.records import KeyedItem, as_keyed


class LedgerItem(NamedTuple):
    outcome: str  # counted, duplicate or late (rejected events go to the dead letters instead)
    keyed: KeyedItem


# the wire array's fields in order: the outcome, then the keyed item's fields
WIRE_FIELDS: tuple[str, ...] = ("outcome", *KeyedItem._fields)
OUTCOME = WIRE_FIELDS.index("outcome")


def position(name: str) -> int:
    """Where the field ``name`` (``outcome`` or a field of ``KeyedItem``) is in the wire array."""
    return WIRE_FIELDS.index(name)


def ledger_item(outcome: str, item: list[Any]) -> list[Any]:
    """The wire array of the keyed item ``item`` (a decoded wire array) with its outcome."""
    return [outcome, *item]


def encode_ledger_item(record: LedgerItem) -> list[Any]:
    return ledger_item(record.outcome, list(record.keyed))


def decode_ledger_item(item: list[Any]) -> LedgerItem:
    """A decoded wire array as named fields (a wrong length raises TypeError)."""
    return LedgerItem(item[OUTCOME], as_keyed(item[OUTCOME + 1 :]))
