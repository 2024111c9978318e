"""Fixed vectors for every key derived by hashing: literal inputs, literal outputs.

A derived key is part of the contract: Stripe keeps the identifiers it has seen, and a release that
derived another one for the same request would have it counted twice; Kafka's partition of a routing
key must be the one Java clients choose. These values never change.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stripemeter.core.push_plan import Request, idempotency_key, identifier, identifier_of_key
from stripemeter.core.reconcile_compare import Item
from stripemeter.core.replay_plan import correction_id
from stripemeter.domain.auth import digest
from stripemeter.schemas.partitioning import partition_for
from stripemeter.services.reconciliation.act import correction_identifier

DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)  # 1_796_083_200 s


@pytest.mark.parametrize(
    ("key", "version", "expected"),
    [
        (("acme", "api_calls", "cus-42", DEC_1), 3, "sm_25e4236a86f2f5d8ff772dc4_3"),
        (("acme", "api_calls", "cus-42", DEC_1), 4, "sm_25e4236a86f2f5d8ff772dc4_4"),
        # every part of the counter counts, in its place
        (("acme", "api_calls", "cus-43", DEC_1), 3, "sm_8a6d3e58f159a5208d4f2eb4_3"),
        (("api_calls", "acme", "cus-42", DEC_1), 3, "sm_d673c30730691d4fbdb49be4_3"),
        (("acme", "api_calls", "cus-42", DEC_1.replace(hour=1)), 3, "sm_6c5200e05968e7dee16ec0f0_3"),
    ],
)  # fmt: skip
def test_the_stripe_identifier_of_a_meter_event_request(
    key: tuple[str, str, str, datetime], version: int, expected: str
) -> None:
    assert identifier(key, version) == expected


def test_the_idempotency_key_of_each_attempt_and_back() -> None:
    request = Request("sm_25e4236a86f2f5d8ff772dc4_3", "api_calls", {"value": "2"}, 0, 2, 2)
    keys = [idempotency_key(request, attempt) for attempt in range(3)]
    assert keys == [
        "sm_25e4236a86f2f5d8ff772dc4_3",
        "sm_25e4236a86f2f5d8ff772dc4_3-r1",
        "sm_25e4236a86f2f5d8ff772dc4_3-r2",
    ]
    assert {identifier_of_key(k) for k in keys} == {"sm_25e4236a86f2f5d8ff772dc4_3"}
    # a key whose tail after the last "-r" is not an attempt number is an identifier itself
    assert identifier_of_key("sm_x-run-r") == "sm_x-run-r"
    assert identifier_of_key("sm_x-run-r12") == "sm_x-run"
    assert identifier_of_key("-r1") == "-r1"


def test_the_reconcilers_correction_identifier() -> None:
    item = Item("acme", "api_calls", "cus-42", "sum")
    assert correction_identifier(item, 1_796_083_200, "rec_9") == "smrec_25e4236a86f2f5d8ff772dc4_rec_9"


def test_a_replays_correction_id_ignores_the_order_of_its_sources() -> None:
    sources = [("usage.events", 3, 4711, 0), ("usage.events", 1, 99, 2)]
    expected = "rp_3d941c61869380c45a13cd37312ecf97"
    assert correction_id("acme", ("api_calls", "cus-42", DEC_1), sources) == expected
    assert correction_id("acme", ("api_calls", "cus-42", DEC_1), sources[::-1]) == expected


def test_an_api_keys_digest() -> None:
    assert digest(bytes(range(16)), "s3cret").hex() == (
        "bb913cc836b213896ba4e54fc1d1c54bc72242421085f10ac4944db11bd9f191"
    )


@pytest.mark.parametrize(
    ("routing_key", "murmur2"),
    [  # Kafka's own vectors for its murmur2 (the Java client's UtilsTest), as signed 32-bit values
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
    ],
)
def test_a_routing_keys_partition_is_the_one_the_java_client_chooses(routing_key: str, murmur2: int) -> None:
    for partitions in (1, 3, 12, 100):
        assert partition_for(routing_key, partitions) == (murmur2 & 0x7FFFFFFF) % partitions


def test_keyed_routing_keys_partitions() -> None:
    assert [partition_for(key, 12) for key in ("acme|cus-42", "demo|acme-42", "t|c1")] == [2, 9, 4]
