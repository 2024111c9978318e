"""Metering: one keyed message -> dedupe, lateness, counters, and an outcome for every event.

Each event's outcome (counted, counted again after a redelivery, already handled, duplicate, too
late, overflowing) is decided by ``stripemeter/core/event_decision.py``, exact under redelivery;
this module reads what the decision needs from the tables, one multi-get per message, and applies
the outcomes: dedupe entries, watermarks, counters, ledger items, usage.late records and dead
letters.

Only counted events enter the dedupe table, so a counted duplicate always sees its original.

An idempotency key is one event per (tenant, customer): the contract's tenant-wide scope would need
every event's key checked across partitions, and a customer's events all live in one. The entry is
``tenant + key``; when it belongs to another customer (same partition), this customer's own entry
``tenant + key + customer`` decides, and the reuse is counted (stripemeter_idempotency_keys_reused).
Both entries are read for every event (in the message's one multi-get): the first customer's entry
can expire before the second one's, and the second customer's retry must still find its own.
Reuse across partitions is not seen here: the ledger (GET /v1/events) flags it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from stripemeter.core import event_decision as decision
from stripemeter.core.counting import (
    SEP,
    SEP_BYTES,
    CannotReaggregate,
    CounterValue,
    Partial,
    apply,
    bucket_key,
    counter_key,
    metric_prefix,
    reaggregate,
    stream_key,
)
from stripemeter.core.event_decision import decide, late_against
from stripemeter.domain.policy import MetricPolicy, Policies, expiry_horizon
from stripemeter.domain.units import format_micros
from stripemeter.schemas import dedupe
from stripemeter.schemas.corrections import Correction, decode_control, is_control
from stripemeter.schemas.dead_letters import dead_letter
from stripemeter.schemas.dedupe import correction_entry, dump_entry, load_entry
from stripemeter.schemas.event_json import event_json
from stripemeter.schemas.events import HOUR_MS, MAX_MICROS, InvalidEvent
from stripemeter.schemas.late import LateRecord, encode_late
from stripemeter.schemas.ledger_items import ledger_item
from stripemeter.schemas.policy_updates import PolicyUpdate, decode_policy_update, is_policy_update
from stripemeter.schemas.records import (
    CUSTOMER_REF,
    IDEMPOTENCY_KEY,
    METRIC,
    QUANTITY_MICROS,
    SOURCE_INDEX,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    TENANT_ID,
    TS_MS,
    as_keyed,
    decode_batch,
    keyed_event,
)
from stripemeter.schemas.versions import UnknownRecordVersion, dump_int, dump_value, load_int, load_value

log = logging.getLogger(__name__)

COUNTED, DUPLICATE, LATE, REJECTED = "counted", "duplicate", "late", "rejected"
KEY_REUSED = "key_reused"  # not an outcome: an idempotency key seen for a second customer
NEVER = 2**63  # an event time later than any real one
CORRECTION = "correction"  # an outcome of control messages, not of events
POLICY_UPDATE = "policy_update"  # a mapping change applied (not an outcome of events)
REAGGREGATED = "reaggregated"  # counters re-expressed under a new aggregation
NOT_REAGGREGATED = "not_reaggregated"  # counters that could not be (see counting.reaggregate)


class KV(Protocol):
    """What the meter needs of a table (``state.ChangelogState``, ``memory_state.MemoryState``)."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]: ...

    def put(self, partition: int, key: bytes, value: bytes | None) -> None: ...

    def savepoint(self) -> None: ...

    def release(self) -> None: ...

    def rollback(self) -> None: ...

    def keys_with_prefix(self, partition: int, prefix: bytes) -> list[bytes]: ...


# What a message's own content can make the meter's code raise: the message is set aside (dead letters
# with processing_failed) and the partition moves on. Anything else (RocksDB failing, say) is an
# infrastructure fault and stops the worker, which resumes without loss once it is back.
POISON = (ValueError, TypeError, KeyError, IndexError, ArithmeticError, RecursionError, AttributeError)


@dataclass
class Outcomes:
    """Everything the processed messages produced, until a checkpoint takes it."""

    ledger: list[list[Any]] = field(
        default_factory=list
    )  # wire arrays of stripemeter/schemas/ledger_items.py
    late: list[bytes] = field(default_factory=list)  # usage.late records
    touched: dict[bytes, int] = field(default_factory=dict)  # counter key -> keyed partition
    counts: Counter[str] = field(default_factory=Counter)
    dead: list[bytes] = field(default_factory=list)  # dead letters: events the meter cannot count

    @property
    def awaited(self) -> bool:
        """Corrections were applied: whoever sent them (a replay, an adjustment) waits to see them in
        the counters."""
        return CORRECTION in self.counts

    def mark(self) -> tuple[int, int, int, int, Counter[str]]:
        return len(self.ledger), len(self.late), len(self.touched), len(self.dead), self.counts.copy()

    def undo(self, mark: tuple[int, int, int, int, Counter[str]]) -> None:
        """Forget what was added since ``mark`` (touched keys are kept in insertion order)."""
        ledger, late, touched, dead, counts = mark
        del self.ledger[ledger:], self.late[late:], self.dead[dead:]
        for key in list(self.touched)[touched:]:
            del self.touched[key]
        self.counts = counts


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def item_dead_letter(error: InvalidEvent, item: list[Any], events_topic: str) -> bytes:
    """A dead letter for one event of a keyed message, under its place in usage.events."""
    keyed_item = as_keyed(item)
    error.index = keyed_item.source_index
    error.raw_item = event_json(keyed_item.event())
    return dead_letter(error, events_topic, keyed_item.source_partition, keyed_item.source_offset, None)


class Metering:
    def __init__(
        self, dedupe: KV, counters: KV, watermarks: KV, policies: Policies, events_topic: str = "usage.events"
    ):
        self.events_topic = events_topic
        self.dedupe = dedupe
        self.counters = counters
        self.watermarks = watermarks
        self.policies = policies
        self.outcomes = Outcomes()
        # per partition, since last asked: dedupe entries written, and the earliest ts + lateness of them
        self._written: dict[int, tuple[int, int]] = {}

    def take_written(self, partition: int) -> tuple[int, int]:
        """Dedupe entries written in ``partition`` since the last call, and the earliest event time plus
        lateness among them (``NEVER`` if none): they pace the sweep and tell it when the first of them
        could expire (see ``expiry_horizon``)."""
        return self._written.pop(partition, (0, NEVER))

    def _note_written(self, partition: int, count: int, earliest_due_ms: int) -> None:
        before = self._written.get(partition)
        if before is not None:
            count, earliest_due_ms = before[0] + count, min(before[1], earliest_due_ms)
        self._written[partition] = (count, earliest_due_ms)

    def take_outcomes(self) -> Outcomes:
        taken, self.outcomes = self.outcomes, Outcomes()
        return taken

    def handle(self, partition: int, offset: int, raw: bytes, now_ms: int, topic: str = "keyed") -> bool:
        """One keyed message, events or corrections, under one savepoint. When its handling raises (see
        ``POISON``) nothing it staged is kept; then its events are tried one at a time (``_isolate``):
        only those that raise are dead-lettered (each under its place in usage.events, with
        ``processing_failed`` and what failed), the others are counted, exactly once, and the partition
        moves on. A control message, or one that cannot be read as events, is dead-lettered whole.
        False if anything of the message was set aside. A message (or a stored value) in a record format
        of a later release raises ``UnknownRecordVersion`` with nothing of it kept: counting it wrongly
        or dead-lettering counted usage are both worse than stopping until this worker is upgraded."""
        mark = self.outcomes.mark()
        written = dict(self._written)
        self._savepoint()
        items: list[list[Any]] | None = None
        try:
            if is_policy_update(raw):
                self.process_policy_update(partition, offset, decode_policy_update(raw))
            elif is_control(raw):
                self.process_control(partition, offset, decode_control(raw), now_ms)
            else:
                items = decode_batch(raw)
                self.process(partition, offset, items)
        except UnknownRecordVersion:
            # a later release's format: nothing of it is kept, and the caller stops (never set aside)
            self._rollback(mark, written)
            raise
        except POISON as exc:
            self._rollback(mark, written)
            log.exception("keyed message %s[%d]@%d could not be handled", topic, partition, offset)
            if not items:
                self._dead_letter_message(partition, offset, raw, _reason(exc), topic)
            else:
                self._isolate(partition, offset, raw, items, topic, _reason(exc))
            return False
        self._release()
        return True

    def _savepoint(self) -> None:
        for table in (self.dedupe, self.counters, self.watermarks):
            table.savepoint()

    def _release(self) -> None:
        for table in (self.dedupe, self.counters, self.watermarks):
            table.release()

    def _rollback(
        self, mark: tuple[int, int, int, int, Counter[str]], written: dict[int, tuple[int, int]]
    ) -> None:
        for table in (self.dedupe, self.counters, self.watermarks):
            table.rollback()
        self.outcomes.undo(mark)
        self._written = written

    def _isolate(
        self, partition: int, offset: int, raw: bytes, items: list[list[Any]], topic: str, why: str
    ) -> None:
        """The events of a keyed message whose handling raised, each tried alone under its own savepoint
        (always rolled back); those that raise are dead-lettered with what failed, the rest are then
        counted together, as one message at ``offset``. Together, not one by one: a counter takes one
        update per keyed message (its applied offset guards redelivery), so events counted one by one
        at the same offset would count only the first. If the rest still raise together (no event
        alone does), the whole message is dead-lettered, as before."""
        failed: dict[int, str] = {}
        for index, item in enumerate(items):
            mark, written = self.outcomes.mark(), dict(self._written)
            self._savepoint()
            try:
                self.process(partition, offset, [item])
            except POISON as exc:
                failed[index] = _reason(exc)
                log.warning(
                    "keyed message %s[%d]@%d: event %d could not be handled: %s",
                    topic, partition, offset, index, failed[index],
                )  # fmt: skip
            finally:
                self._rollback(mark, written)
        rest = [item for index, item in enumerate(items) if index not in failed]
        if failed and rest:
            mark, written = self.outcomes.mark(), dict(self._written)
            self._savepoint()
            try:
                self.process(partition, offset, rest)
            except POISON as exc:
                self._rollback(mark, written)
                failed, why = {}, _reason(exc)
            else:
                self._release()
        if not failed:
            self._dead_letter_message(partition, offset, raw, why, topic)
            return
        for index, reason in failed.items():
            self._dead_letter_event(
                partition, offset, items, index, f"the meter could not handle this event: {reason}", topic
            )
        self.outcomes.counts[REJECTED] += len(failed)

    def _dead_letter_event(
        self, partition: int, offset: int, items: list[list[Any]], index: int, message: str, topic: str
    ) -> None:
        """One event of a keyed message under its place in usage.events; a malformed one as it was
        written, under the keyed message."""
        error = InvalidEvent("processing_failed", message[:1000])
        try:
            self.outcomes.dead.append(item_dead_letter(error, items[index], self.events_topic))
        except POISON:
            error.index, error.raw_item = index, items[index]
            self.outcomes.dead.append(dead_letter(error, topic, partition, offset, None))

    def _dead_letter_message(self, partition: int, offset: int, raw: bytes, why: str, topic: str) -> None:
        """Each event of the message under its place in usage.events; a message that cannot even be
        read as events (or a control message), as itself."""
        message = f"the meter could not handle this event's message: {why}"
        try:
            items = [] if is_control(raw) else decode_batch(raw)
        except POISON:
            items = []
        before = len(self.outcomes.dead)
        for index in range(len(items)):
            self._dead_letter_event(partition, offset, items, index, message, topic)
        if not items:
            error = InvalidEvent("processing_failed", message[:1000])
            self.outcomes.dead.append(dead_letter(error, topic, partition, offset, raw))
        self.outcomes.counts[REJECTED] += len(self.outcomes.dead) - before

    def process(self, partition: int, offset: int, items: list[list[Any]]) -> None:
        """Decide (``event_decision.decide``), count and record every event of the keyed message at
        ``offset``.

        The hot loop works on the keyed items as decoded (wire arrays read by their named positions,
        see ``stripemeter/schemas/records.py``), not on objects.
        """
        out = self.outcomes
        ledger = out.ledger
        dedupe_get, dedupe_put = self.dedupe.get, self.dedupe.put
        dkeys, own_keys, known, known_own, repeated = self._read_dedupe(partition, items)
        policies: dict[tuple[str, str], MetricPolicy] = {}  # looked up once per message
        partials: dict[bytes, Partial] = {}
        stored: dict[bytes, CounterValue | None] = {}  # counters as they were before this message
        watermarks: dict[bytes, int | None] = {}
        advanced: set[bytes] = set()
        counted = duplicates = 0
        earliest_due = NEVER
        for item, dkey, own_key, seen_raw, own_raw in zip(
            items, dkeys, own_keys, known, known_own, strict=True
        ):
            tenant, metric, customer = item[TENANT_ID], item[METRIC], item[CUSTOMER_REF]
            ts_ms = item[TS_MS]
            skey = stream_key(tenant, metric, customer).encode()
            policy = policies.get((tenant, metric))
            if policy is None:
                policy = policies[tenant, metric] = self.policies.get(tenant, metric)
            # the stream's watermark, read once per message (most streams have several events)
            watermark = (
                watermarks[skey] if skey in watermarks else self._watermark(partition, skey, watermarks)
            )
            ckey = bucket_key(skey, ts_ms - ts_ms % HOUR_MS)
            if ckey in stored:
                counter = stored[ckey]
            else:
                counter = stored[ckey] = self._counter(partition, ckey)
            pending = partials.get(ckey)
            if repeated:
                seen_raw = dedupe_get(partition, dkey)
                own_raw = dedupe_get(partition, own_key)
            entry = load_entry(seen_raw) if seen_raw is not None else None
            if (entry is not None and entry[dedupe.CUSTOMER_REF] != customer) or (
                entry is None and own_raw is not None
            ):
                # the key was first used by another customer (whose entry may have expired since):
                # keys are one event per (tenant, customer, key), so this customer's own entry
                # decides (see the module's docstring)
                dkey = own_key
                entry = load_entry(own_raw) if own_raw is not None else None
                out.counts[KEY_REUSED] += 1
            outcome = decide(item, entry, offset, watermark, policy, counter, pending)
            if outcome == decision.DUPLICATE:
                ledger.append(ledger_item(DUPLICATE, item))
                duplicates += 1
                continue
            if outcome == decision.ALREADY_HANDLED:
                continue  # no trace
            if outcome == decision.LATE:
                self._too_late(item, watermark, policy)
                continue
            if outcome == decision.OVERFLOW:
                self._overflowed(item)
                continue
            if outcome == decision.COUNTED:
                dedupe_put(
                    partition,
                    dkey,
                    dump_entry(
                        item[SOURCE_PARTITION],
                        item[SOURCE_OFFSET],
                        item[SOURCE_INDEX],
                        offset,
                        ts_ms,
                        metric,
                        customer,
                    ),
                )
                if ts_ms + policy.lateness_ms < earliest_due:
                    earliest_due = ts_ms + policy.lateness_ms
            # counted, or counted again (the counter skips a keyed message it already applied)
            ledger.append(ledger_item(COUNTED, item))
            counted += 1
            if watermark is None or watermark < ts_ms:
                watermarks[skey] = ts_ms
                advanced.add(skey)
            if pending is None:
                pending = partials[ckey] = Partial(policy.aggregation)
            pending.add(item[QUANTITY_MICROS], ts_ms)
        out.counts[COUNTED] += counted
        out.counts[DUPLICATE] += duplicates
        self._note_written(partition, counted, earliest_due)
        self._write_counters(partition, offset, partials, stored)
        for skey in advanced:
            mark = watermarks[skey]
            if mark is not None:  # always: only streams whose watermark was set advanced
                self.watermarks.put(partition, skey, dump_int(mark))

    def _write_counters(
        self,
        partition: int,
        offset: int,
        partials: dict[bytes, Partial],
        stored: dict[bytes, CounterValue | None],
    ) -> None:
        """Each counter the message added to, unless it already applied ``offset`` (a redelivery);
        every one is published again at the checkpoint either way."""
        for ckey, partial in partials.items():
            new = apply(stored[ckey], partial, offset)
            if new is not None:
                self.counters.put(partition, ckey, dump_value(new))
            self.outcomes.touched[ckey] = partition

    def _read_dedupe(
        self, partition: int, items: list[list[Any]]
    ) -> tuple[list[bytes], list[bytes], list[bytes | None], list[bytes | None], bool]:
        """The message's dedupe keys, each event's ``tenant|key`` and its customer's own
        ``tenant|key|customer`` (see the module's docstring), and their stored entries: read in one
        multi-get before any is written. A key twice in one message must see what its first
        occurrence wrote, so such a message (``repeated``) is read key by key as it is processed."""
        dkeys = [f"{item[TENANT_ID]}{SEP}{item[IDEMPOTENCY_KEY]}".encode() for item in items]
        own_keys = [
            dkey + SEP_BYTES + item[CUSTOMER_REF].encode() for item, dkey in zip(items, dkeys, strict=True)
        ]
        if len(set(dkeys)) < len(dkeys):
            unread: list[bytes | None] = [None] * len(dkeys)
            return dkeys, own_keys, unread, unread, True
        both = self.dedupe.get_many(partition, dkeys + own_keys)
        return dkeys, own_keys, both[: len(dkeys)], both[len(dkeys) :], False

    def _too_late(self, item: list[Any], watermark: int | None, policy: MetricPolicy) -> None:
        """A too-late event: a usage.late record and a ledger row."""
        against = late_against(watermark, policy)
        self.outcomes.late.append(encode_late(LateRecord(keyed_event(item), against, policy.lateness_ms)))
        self.outcomes.ledger.append(ledger_item(LATE, item))
        self.outcomes.counts[LATE] += 1

    def _overflowed(self, item: list[Any]) -> None:
        """An event its counter cannot take: rejected, with a dead letter under its place in usage.events."""
        error = InvalidEvent(
            "counter_overflow",
            f"counting it would take the hour's counter beyond {format_micros(MAX_MICROS)}",
            field="quantity",
        )
        self.outcomes.dead.append(item_dead_letter(error, item, self.events_topic))
        self.outcomes.counts[REJECTED] += 1

    def _counter(self, partition: int, ckey: bytes) -> CounterValue | None:
        raw = self.counters.get(partition, ckey)
        return load_value(raw) if raw is not None else None

    def process_control(
        self, partition: int, offset: int, corrections: list[Correction], now_ms: int
    ) -> None:
        """Apply the corrections of the control message at ``offset``, each at most once."""
        partials: dict[bytes, Partial] = {}
        for c in corrections:
            dkey = f"{c.tenant_id}{SEP}~correction:{c.id}".encode()
            seen_raw = self.dedupe.get(partition, dkey)
            ckey = counter_key(c.tenant_id, c.metric, c.customer_ref, c.bucket_ms).encode()
            partial = partials.get(ckey)
            if partial is None:
                partial = partials[ckey] = Partial(self.policies.get(c.tenant_id, c.metric).aggregation)
            if seen_raw is not None and load_entry(seen_raw)[dedupe.KEYED_OFFSET] != offset:
                # applied from an earlier message (sent twice): adds nothing, but the counter still
                # records this message as applied, so whoever sent it sees it in the counters
                continue
            if seen_raw is None:
                # kept like an event of now: until the stream's watermark passes now + lateness + margin
                self.dedupe.put(partition, dkey, correction_entry(offset, now_ms, c.metric, c.customer_ref))
                lateness_ms = self.policies.get(c.tenant_id, c.metric).lateness_ms
                self._note_written(partition, 1, now_ms + lateness_ms)
            if c.kind == "events":
                partial.add_events(c.micros, c.events, c.ts_ms, c.last_micros)
            elif c.kind == "last":
                partial.set_last(c.micros, c.ts_ms)
            else:
                partial.adjust(c.micros)
            self.outcomes.counts[CORRECTION] += 1
        for ckey, partial in partials.items():
            raw = self.counters.get(partition, ckey)
            new = apply(load_value(raw) if raw is not None else None, partial, offset)
            if new is not None:
                self.counters.put(partition, ckey, dump_value(new))
            self.outcomes.touched[ckey] = partition

    def process_policy_update(self, partition: int, offset: int, update: PolicyUpdate) -> None:
        """A mapping change, in order with the partition's events: what follows is counted under it.

        With ``reaggregate_from_ms`` the metric's counters of this partition from that bucket on are
        re-expressed under the aggregation in force now (the newest version known, which may be newer
        than this update's), each at most once (``counting.reaggregate``), and published again."""
        tenant, metric = update.tenant_id, update.metric
        if self.policies.learn(tenant, metric, update.policy()):
            log.info(
                "metric %s/%s: mapping version %d in force from keyed partition %d offset %d (%s, lateness"
                " %d s)", tenant, metric, update.version, partition, offset, update.aggregation,
                update.lateness_ms // 1000,
            )  # fmt: skip
        self.outcomes.counts[POLICY_UPDATE] += 1
        if update.reaggregate_from_ms is None:
            return
        aggregation = self.policies.get(tenant, metric).aggregation
        for ckey in self.counters.keys_with_prefix(partition, metric_prefix(tenant, metric)):
            bucket_ms = int(ckey.rsplit(SEP_BYTES, 1)[1])
            raw = self.counters.get(partition, ckey)
            if bucket_ms < update.reaggregate_from_ms or raw is None:
                continue
            try:
                new = reaggregate(load_value(raw), aggregation, offset)
            except CannotReaggregate as exc:
                log.error(
                    "counter %s could not be re-aggregated as %s and keeps its value: %s",
                    ckey.decode(errors="replace").replace(SEP, "/"),
                    aggregation,
                    exc,
                )
                self.outcomes.counts[NOT_REAGGREGATED] += 1
                continue
            if new is not None:
                self.counters.put(partition, ckey, dump_value(new))
                self.outcomes.touched[ckey] = partition
                self.outcomes.counts[REAGGREGATED] += 1

    def expire_dedupe(
        self,
        partition: int,
        entries: Iterable[tuple[bytes, bytes]],
        margin_ms: int,
        now_ms: int | None = None,
    ) -> tuple[int, int]:
        """Drop dedupe entries no duplicate can need any more; returns how many, and the earliest event
        time plus lateness among the entries kept (``NEVER`` if none).

        An entry can go once its event time is older than its stream's watermark minus the metric's
        lateness minus ``margin_ms``: a duplicate of it would be too late, so never counted anyway.
        ``entries`` may be a live RocksDB iterator: deletes are only staged here. With ``now_ms``,
        entries too recent to expire under any watermark of their stream (no event is accepted more
        than an hour ahead of the clock; two allowed here) are passed over without looking one up.
        """
        expired = 0
        earliest_due = NEVER
        watermarks: dict[bytes, int | None] = {}
        horizons: dict[tuple[bytes, str], tuple[int, int]] = {}  # (tenant, metric) -> lateness, horizon
        for key, raw in entries:
            entry = load_entry(raw)
            ts_ms, metric = entry[dedupe.TS_MS], entry[dedupe.METRIC]
            tenant_raw = key.split(SEP_BYTES, 1)[0]
            known = horizons.get((tenant_raw, metric))
            if known is None:
                lateness = self.policies.get(tenant_raw.decode(), metric).lateness_ms
                horizon = expiry_horizon(now_ms, lateness, margin_ms) if now_ms is not None else NEVER
                known = horizons[tenant_raw, metric] = (lateness, horizon)
            lateness, horizon = known
            if ts_ms < horizon:
                skey = stream_key(tenant_raw.decode(), metric, entry[dedupe.CUSTOMER_REF]).encode()
                watermark = self._watermark(partition, skey, watermarks)
                if watermark is not None and ts_ms < watermark - lateness - margin_ms:
                    self.dedupe.put(partition, key, None)
                    expired += 1
                    continue
            if ts_ms + lateness < earliest_due:
                earliest_due = ts_ms + lateness
        return expired, earliest_due

    def _watermark(self, partition: int, skey: bytes, cache: dict[bytes, int | None]) -> int | None:
        if skey not in cache:
            stored = self.watermarks.get(partition, skey)
            cache[skey] = load_int(stored) if stored is not None else None
        return cache[skey]
