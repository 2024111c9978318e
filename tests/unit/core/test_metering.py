"""The metering decisions against an in-memory state, including redelivery after a crash."""

from __future__ import annotations

import orjson

from stripemeter.core.counting import counter_key
from stripemeter.core.memory_state import MemoryState
from stripemeter.core.metering import Metering
from stripemeter.domain.policy import Aggregation, MetricPolicy, Policies, expiry_horizon
from stripemeter.schemas.corrections import encode_control, events_correction
from stripemeter.schemas.events import UsageEvent
from stripemeter.schemas.policy_updates import PolicyUpdate, encode_policy_update
from stripemeter.schemas.records import Source, encode_batch, encode_keyed
from stripemeter.schemas.versions import load_value

HOUR = 3_600_000
T0 = 1_794_988_800_000  # an hour boundary


DictKV = MemoryState  # the name these tests grew up with


def item(key: str, micros: int, ts: int, src: int, customer: str = "c", metric: str = "m") -> list[object]:
    event = UsageEvent("t", metric, customer, micros, ts, key, False, None, None)
    return encode_keyed(event, Source(0, src, 0))


def make(lateness_ms: int = 48 * HOUR, **by_metric: MetricPolicy) -> tuple[Metering, DictKV]:
    counters = DictKV()
    policies = Policies(MetricPolicy(lateness_ms=lateness_ms), {("t", m): p for m, p in by_metric.items()})
    return Metering(DictKV(), counters, DictKV(), policies), counters


def dedupe_of(m: Metering) -> DictKV:
    """The dedupe store `make` gave ``m`` (typed as any KV on Metering)."""
    assert isinstance(m.dedupe, DictKV)
    return m.dedupe


def total(counters: DictKV, bucket: int, customer: str = "c", metric: str = "m") -> int:
    raw = counters.get(0, counter_key("t", metric, customer, bucket).encode())
    return int(load_value(raw)[0]) if raw else 0


def test_duplicates_count_once_even_inside_one_message() -> None:
    m, counters = make()
    m.process(0, 0, [item("k1", 5, T0, 1), item("k1", 5, T0, 2), item("k2", 1, T0, 3)])
    m.process(0, 1, [item("k1", 5, T0 + 10, 4)])  # same key later, other ts: still a duplicate
    assert total(counters, T0) == 6
    assert [r[0] for r in m.outcomes.ledger] == ["counted", "duplicate", "counted", "duplicate"]


def test_late_within_window_counts_into_its_own_bucket_beyond_goes_to_late() -> None:
    m, counters = make(lateness_ms=2 * HOUR)
    m.process(0, 0, [item("new", 1, T0 + 10 * HOUR, 1)])
    m.process(0, 1, [item("ok", 2, T0 + 8 * HOUR, 2), item("old", 4, T0 + 7 * HOUR, 3)])
    assert total(counters, T0 + 8 * HOUR) == 2
    assert total(counters, T0 + 7 * HOUR) == 0
    assert [r[0] for r in m.outcomes.ledger] == ["counted", "counted", "late"]
    late = orjson.loads(m.outcomes.late[0])
    assert (late["idempotencyKey"], late["lateness"]) == ("old", 7200)
    assert late["watermark"].startswith("2026-11-18T18:00:00")


def test_per_metric_lateness_and_aggregation() -> None:
    m, counters = make(seats=MetricPolicy("last", 0), calls=MetricPolicy("count", HOUR))
    m.process(
        0,
        0,
        [item("a", 3_000_000, T0 + 5, 1, metric="seats"), item("b", 9_000_000, T0 + 1, 2, metric="seats")],
    )
    m.process(0, 1, [item("c", 7, T0, 3, metric="calls"), item("d", 8, T0, 4, metric="calls")])
    assert total(counters, T0, metric="seats") == 3_000_000
    assert total(counters, T0, metric="calls") == 2_000_000


def test_redelivered_message_after_a_crash_counts_nothing_twice() -> None:
    m, counters = make()
    batch = [item("k1", 5, T0, 1), item("k2", 7, T0, 2)]
    m.process(0, 10, batch)
    m.take_outcomes()
    m.process(0, 10, batch)  # the keyed message read again: same offset
    assert total(counters, T0) == 12
    again = m.take_outcomes()
    assert [r[0] for r in again.ledger] == ["counted", "counted"]  # same ledger rows again (idempotent)
    assert again.touched  # and the counter is published again

    m.process(0, 11, batch)  # intake re-sent the same inputs at a new keyed offset
    assert total(counters, T0) == 12
    assert m.take_outcomes().ledger == []


def test_counted_event_redelivered_after_watermark_moved_is_not_called_late() -> None:
    m, counters = make(lateness_ms=HOUR)
    m.process(0, 0, [item("early", 1, T0, 1)])
    m.process(0, 1, [item("much-later", 1, T0 + 5 * HOUR, 2)])
    m.process(0, 0, [item("early", 1, T0, 1)])  # crash: message 0 read again
    assert total(counters, T0) == 1
    assert m.outcomes.ledger[-1][0] == "counted"


def test_dedupe_state_expires_behind_the_lateness_window_and_47h_duplicates_still_count_once() -> None:
    m, counters = make(lateness_ms=48 * HOUR)
    dedupe = m.dedupe
    assert isinstance(dedupe, DictKV)
    m.process(0, 0, [item("old", 1, T0, 1), item("recent", 1, T0 + 30 * HOUR, 2)])
    m.process(0, 1, [item("old", 1, T0, 3)])  # a duplicate 47 h after: still known
    assert total(counters, T0) == 1
    m.process(0, 2, [item("now", 1, T0 + 50 * HOUR, 4)])  # the watermark moves past old + 48 h + margin
    assert m.expire_dedupe(0, list(dedupe.data[0].items()), margin_ms=HOUR) == (1, T0 + 30 * HOUR + 48 * HOUR)
    assert set(dedupe.data[0]) == {b"t\x1frecent", b"t\x1fnow"}
    m.process(0, 3, [item("old", 1, T0, 5)])  # its duplicate now: too late, never counted
    assert total(counters, T0) == 1
    assert m.outcomes.ledger[-1][0] == "late"


def test_an_event_that_would_overflow_its_counter_is_rejected_before_anything_is_staged() -> None:
    """Three events of the largest quantity: the third would leave 64-bit micro-units. It is rejected
    (a dead letter naming the field), has no dedupe entry, and the counter holds the two counted."""
    big = 9_223_372_036_854 * 1_000_000 // 3 * 2  # 2/3 of the largest counter
    m, counters = make()
    m.process(0, 0, [item("a", big // 2, T0, 1), item("b", big // 2, T0, 2), item("c", big, T0, 3)])
    assert total(counters, T0) == big
    assert [r[0] for r in m.outcomes.ledger] == ["counted", "counted"]
    (dead,) = [orjson.loads(d) for d in m.outcomes.dead]
    assert (dead["error"]["code"], dead["error"]["field"], dead["offset"], dead["index"]) == (
        "counter_overflow",
        "quantity",
        3,
        0,
    )
    assert m.dedupe.get(0, b"t\x1fc") is None  # a retry is rejected again, not called a duplicate
    m.process(0, 1, [item("c", big, T0, 3)])
    assert total(counters, T0) == big and len(m.outcomes.dead) == 2
    # the same message read again after a crash decides the same
    m.process(0, 0, [item("a", big // 2, T0, 1), item("b", big // 2, T0, 2), item("c", big, T0, 3)])
    assert total(counters, T0) == big and len(m.outcomes.dead) == 3


def test_a_message_whose_handling_raises_dead_letters_only_the_event_at_fault() -> None:
    m, counters = make()
    assert m.handle(0, 0, orjson.dumps([item("ok", 5, T0, 1)]), T0)
    poisoned = [item("fine", 1, T0, 2), item("bad", 1, T0, 3)]
    poisoned[1][4] = "not a time"  # the event time of the second event cannot be computed with
    assert not m.handle(0, 1, orjson.dumps(poisoned), T0)
    assert total(counters, T0) == 6  # the first event counted
    assert b"t\x1fbad" not in dedupe_of(m).data[0]
    assert [r[0] for r in m.outcomes.ledger] == ["counted", "counted"]
    dead = [orjson.loads(d) for d in m.outcomes.dead]
    # the malformed event as written, under the keyed message, saying what failed
    assert [(d["error"]["code"], d["topic"], d["offset"], d["index"]) for d in dead] == [
        ("processing_failed", "keyed", 1, 1)
    ]
    assert "TypeError" in dead[0]["error"]["message"]
    assert not m.handle(0, 2, b"not json", T0)  # unreadable: the keyed message itself
    assert orjson.loads(m.outcomes.dead[-1])["topic"] == "keyed"
    assert m.handle(0, 3, orjson.dumps([item("later", 2, T0, 4)]), T0)  # and the partition moves on
    assert total(counters, T0) == 8


class Savepoints(MemoryState):
    def __init__(self) -> None:
        super().__init__()
        self.savepoints = 0

    def savepoint(self) -> None:
        self.savepoints += 1
        super().savepoint()


class Bug(Policies):
    """A policy lookup that raises for one metric: an event no rule foresaw."""

    def get(self, tenant: str, metric: str) -> MetricPolicy:
        if metric == "poison":
            raise KeyError(f"no rule for {metric}")
        return super().get(tenant, metric)


def keyed(
    tenant: str, customer: str, key: str, micros: int, ts: int, src: int, metric: str = "m"
) -> list[object]:
    return encode_keyed(
        UsageEvent(tenant, metric, customer, micros, ts, key, False, None, None), Source(0, src, 0)
    )


def test_an_event_that_raises_in_a_packed_message_is_dead_lettered_alone_and_the_rest_count_once() -> None:
    """Intake packs events of several tenants and customers into one keyed message. One of them makes
    the meter raise: only it is dead-lettered (under its place in usage.events, naming the failure);
    the others count, exactly once, also when the message is read again after a crash."""
    dedupe, counters, watermarks = Savepoints(), Savepoints(), Savepoints()
    m = Metering(dedupe, counters, watermarks, Bug(MetricPolicy()))
    packed = [
        keyed("t", "a", "a1", 2, T0, 10),
        keyed("t", "a", "a2", 3, T0 + 1, 11),  # the same counter as a1: both must count
        keyed("u", "x", "p1", 9, T0, 12, metric="poison"),
        keyed("t", "b", "b1", 5, T0, 13),
        keyed("u", "x", "x1", 7, T0, 14),
    ]
    assert m.handle(0, 0, orjson.dumps([keyed("t", "a", "a0", 1, T0, 9)]), T0)  # the normal path:
    assert (dedupe.savepoints, counters.savepoints, watermarks.savepoints) == (1, 1, 1)  # one savepoint
    m.take_outcomes()

    def totals() -> tuple[int, int, int]:
        def one(tenant: str, customer: str) -> int:
            raw = counters.get(0, counter_key(tenant, "m", customer, T0).encode())
            return int(load_value(raw)[0]) if raw else 0

        return one("t", "a"), one("t", "b"), one("u", "x")

    assert not m.handle(0, 1, orjson.dumps(packed), T0)
    assert totals() == (6, 5, 7)
    out = m.take_outcomes()
    assert sorted((r[0], r[6]) for r in out.ledger) == [
        ("counted", "a1"), ("counted", "a2"), ("counted", "b1"), ("counted", "x1")
    ]  # fmt: skip
    (dead,) = [orjson.loads(d) for d in out.dead]
    assert (dead["error"]["code"], dead["topic"], dead["offset"], dead["index"]) == (
        "processing_failed", "usage.events", 12, 0
    )  # fmt: skip
    assert "KeyError" in dead["error"]["message"] and "no rule for poison" in dead["error"]["message"]
    assert dead["raw"] and orjson.loads(dead["raw"])["idempotencyKey"] == "p1"
    assert (out.counts["counted"], out.counts["rejected"]) == (4, 1)
    assert b"u\x1fp1" not in dedupe.data[0]

    # the message read again after a crash: the same decisions, nothing counted twice
    assert not m.handle(0, 1, orjson.dumps(packed), T0)
    assert totals() == (6, 5, 7)
    again = m.take_outcomes()
    assert sorted(r[6] for r in again.ledger) == ["a1", "a2", "b1", "x1"] and len(again.dead) == 1
    # intake re-sending the same inputs at a later keyed offset: already handled, no trace
    assert not m.handle(0, 2, orjson.dumps(packed), T0)
    assert totals() == (6, 5, 7)
    assert m.take_outcomes().ledger == []


def test_raising_lateness_cannot_count_a_duplicate_whose_dedupe_entry_expired() -> None:
    """Lateness 2 h; an event is counted, its entry expires behind the window. Lateness is raised to
    10 h: the event sent again is inside the new window, but older than the horizon (the entries from
    there on all still exist), so it is too late, not counted twice."""
    m, counters = make(lateness_ms=2 * HOUR)
    m.process(0, 0, [item("old", 1, T0, 1)])
    m.process(0, 1, [item("now", 1, T0 + 5 * HOUR, 2)])  # watermark T0 + 5 h
    assert m.expire_dedupe(0, list(dedupe_of(m).data[0].items()), margin_ms=HOUR)[0] == 1
    raised_at = T0 + 5 * HOUR
    horizon = expiry_horizon(raised_at, 2 * HOUR)
    m.policies.replace({("t", "m"): MetricPolicy("sum", 10 * HOUR, horizon)})
    m.process(0, 2, [item("old", 1, T0, 3)])
    assert total(counters, T0) == 1
    assert m.outcomes.ledger[-1][0] == "late"
    # an event inside the window and after the horizon still counts
    m.process(0, 3, [item("fresh", 1, raised_at - HOUR, 4)])
    assert m.outcomes.ledger[-1][0] == "counted"


def test_a_key_is_one_event_per_customer_and_its_reuse_is_counted() -> None:
    m, counters = make()
    m.process(0, 0, [item("order-1", 5, T0, 1, customer="a"), item("order-1", 7, T0, 2, customer="b")])
    m.process(0, 1, [item("order-1", 7, T0, 3, customer="b"), item("order-1", 5, T0, 4, customer="a")])
    assert (total(counters, T0, customer="a"), total(counters, T0, customer="b")) == (5, 7)
    assert [r[0] for r in m.outcomes.ledger] == ["counted", "counted", "duplicate", "duplicate"]
    assert m.outcomes.counts["key_reused"] == 2


def test_a_reused_key_stays_one_event_for_its_second_customer_after_the_first_ones_entry_expires() -> None:
    """Customer b uses key k first (entry ``t|k``), then a (entry ``t|k|a``). b's stream moves on and
    the sweep drops b's entry while a's is still needed: a's retry of k is still a duplicate."""
    m, counters = make(lateness_ms=2 * HOUR)
    m.process(0, 0, [item("k", 5, T0, 1, customer="b")])
    m.process(0, 1, [item("k", 7, T0, 2, customer="a")])
    m.process(0, 2, [item("b-now", 1, T0 + 5 * HOUR, 3, customer="b")])  # only b's watermark moves
    assert m.expire_dedupe(0, list(dedupe_of(m).data[0].items()), margin_ms=HOUR)[0] == 1
    assert b"t\x1fk" not in dedupe_of(m).data[0] and b"t\x1fk\x1fa" in dedupe_of(m).data[0]
    m.take_outcomes()
    m.process(0, 3, [item("k", 7, T0, 4, customer="a")])  # a's producer retries k
    assert total(counters, T0, customer="a") == 7
    again = m.take_outcomes()
    assert [r[0] for r in again.ledger] == ["duplicate"]
    assert again.counts["key_reused"] == 1  # still seen as the key another customer used
    # the same inside a message that repeats the key (read key by key)
    m.process(0, 4, [item("k", 7, T0, 5, customer="a"), item("k", 7, T0, 6, customer="a")])
    assert total(counters, T0, customer="a") == 7
    assert [r[0] for r in m.take_outcomes().ledger] == ["duplicate", "duplicate"]
    # and a third customer's first use of k still counts
    m.process(0, 5, [item("k", 3, T0 + 4 * HOUR, 7, customer="c")])
    assert total(counters, T0 + 4 * HOUR, customer="c") == 3


def update(
    version: int, aggregation: Aggregation = "sum", lateness_ms: int = 48 * HOUR, since: int | None = None
) -> bytes:
    return encode_policy_update(PolicyUpdate("t", "m", version, aggregation, lateness_ms, None, since))


def test_a_mapping_change_applies_from_its_place_in_the_partition() -> None:
    m, counters = make()
    m.handle(0, 0, encode_batch([item("a", 2_000_000, T0, 1)]), T0)
    assert m.handle(0, 1, update(7, "count"), T0)
    m.handle(0, 2, encode_batch([item("b", 5_000_000, T0 + HOUR, 2)]), T0)
    assert total(counters, T0) == 2_000_000  # counted before the change: a sum (not re-aggregated)
    assert total(counters, T0 + HOUR) == 1_000_000  # after it: a count
    assert m.policies.get("t", "m").version == 7
    # an older change arriving later (a retried request, another API process) changes nothing
    m.handle(0, 3, update(6, "sum"), T0)
    assert m.policies.get("t", "m").aggregation == "count"


def test_a_change_of_aggregation_reexpresses_the_counters_from_its_start() -> None:
    m, counters = make()
    m.handle(0, 0, encode_batch([item("a", 2_000_000, T0, 1), item("b", 3_000_000, T0 + 5, 2)]), T0)
    m.handle(0, 1, encode_batch([item("c", 4_000_000, T0 + 2 * HOUR, 3)]), T0)
    m.take_outcomes()
    m.handle(0, 2, update(3, "count", since=T0 + HOUR), T0)
    assert total(counters, T0) == 5_000_000  # before ``since``: a closed period keeps its value
    assert total(counters, T0 + 2 * HOUR) == 1_000_000
    taken = m.take_outcomes()
    assert list(taken.touched) == [counter_key("t", "m", "c", T0 + 2 * HOUR).encode()]  # published again
    assert taken.counts["reaggregated"] == 1
    m.handle(0, 2, update(3, "count", since=T0 + HOUR), T0)  # redelivered after a crash: the same
    assert total(counters, T0 + 2 * HOUR) == 1_000_000
    m.handle(0, 4, update(4, "last", since=T0), T0)
    assert (total(counters, T0), total(counters, T0 + 2 * HOUR)) == (3_000_000, 4_000_000)


def test_counters_from_before_every_total_was_kept_keep_their_value() -> None:
    m, counters = make()
    key = counter_key("t", "m", "c", T0).encode()
    counters.put(0, key, orjson.dumps([9_000_000, 4, 0, -1]))
    m.handle(0, 1, update(2, "count", since=T0), T0)
    assert total(counters, T0) == 9_000_000
    assert m.take_outcomes().counts["not_reaggregated"] == 1


def test_replayed_events_are_counted_every_way() -> None:
    m, counters = make()
    m.handle(0, 0, encode_batch([item("a", 2_000_000, T0, 1)]), T0)
    correction = events_correction("rp_1", "t", "m", "c", T0, [(3_000_000, T0 + 9), (1_000_000, T0 + 7)])
    m.handle(0, 1, encode_control([correction]), T0)
    assert total(counters, T0) == 6_000_000
    m.handle(0, 2, update(2, "count", since=T0), T0)
    assert total(counters, T0) == 3_000_000
    m.handle(0, 3, update(3, "last", since=T0), T0)
    assert total(counters, T0) == 3_000_000  # the newest of the three: the replayed one at T0 + 9


def test_applied_corrections_are_awaited_until_a_checkpoint_takes_them() -> None:
    """Whoever sent a correction waits to see it in the counters: the meter checkpoints at once."""
    m, _counters = make()
    m.handle(0, 0, encode_batch([item("a", 2_000_000, T0, 1)]), T0)
    assert not m.outcomes.awaited  # events alone wait for the checkpoint timer
    m.handle(0, 1, encode_control([events_correction("rp_1", "t", "m", "c", T0, [(1, T0)])]), T0)
    assert m.outcomes.awaited
    m.take_outcomes()
    assert not m.outcomes.awaited
