"""Changing what ties local names to Stripe, so that every change the API accepts bills right from the
moment it is accepted.

- **Read your writes.** A metric mapping change is saved with a new version, then sent to every keyed
  partition (schemas/policy_updates.py); the answer waits for the broker. An event that reaches Kafka
  after the answer is counted under the change on whichever worker counts it. Every change also
  bumps the version of the counter hours the writer may be deciding on, so nothing is sent under the
  old mapping once the answer is out (adapters/postgres/push_mapping_changes.py).
- **A metric's aggregation does not change under its counters.** Counters of the open periods were
  counted under the old aggregation: the change is refused (409, ``aggregation``) unless the caller asks
  to re-aggregate them (``reaggregate``: ``dry-run`` shows what the ledger says each would become,
  ``apply`` makes the change and has the meter re-express them, core/counting.reaggregate). Counters
  the database has not seen yet are re-expressed too: the update always re-aggregates from the start
  of the oldest open period when the aggregation changes.
- **One (meter, Stripe customer) pair, one counter stream.** The reconciler compares each stream with
  its pair's summary, so a pair may take one stream's usage: a second metric on a meter event name, a
  second customerRef on a Stripe customer, or a Stripe customer of another tenant is refused (409
  naming the field). So is a change that would leave usage of open periods at the pair a stream sent
  it to (a remap): Stripe would bill it there, and the new pair would get only later changes.
- **Stripe meters are the operator's.** A tenant's own key maps metrics only to meters an operator
  granted the tenant (services/meter_grants.py); a Stripe customer is bound to one tenant.
Changes of one tenant (and of one Stripe customer) exclude each other by PostgreSQL advisory locks, tried:
a change that finds another in progress is ``Busy`` (409 with Retry-After).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from stripemeter.adapters.kafka.corrections import send_policy_update
from stripemeter.adapters.postgres import destinations, mappings, push_mapping_changes
from stripemeter.adapters.postgres.destinations import Destination, StreamKey
from stripemeter.adapters.postgres.reaggregation import Counted, counted_since, hours_folded
from stripemeter.core.counting import view
from stripemeter.domain import metrics, periods
from stripemeter.domain.config import Settings
from stripemeter.domain.errors import Conflict, NotFound, Transient
from stripemeter.domain.policy import Aggregation
from stripemeter.domain.timefmt import iso_hour, iso_seconds
from stripemeter.domain.units import micros_to_number
from stripemeter.schemas.policy_updates import PolicyUpdate
from stripemeter.schemas.topics import TopicNames
from stripemeter.services import meter_grants

log = logging.getLogger(__name__)

Reaggregate = Literal["dry-run", "apply"]
# The longest billing period, for "usage of open periods" across tenants whose anchors are not read
LONGEST_PERIOD = timedelta(days=31)


@dataclass(frozen=True)
class MetricChange:
    tenant: str
    metric: str
    event_name: str
    aggregation: Aggregation
    lateness_seconds: int | None
    reaggregate: Reaggregate | None = None
    granted_only: bool = False  # a tenant's own key: only a meter an operator granted the tenant


@dataclass(frozen=True)
class CustomerChange:
    tenant: str
    customer: str
    stripe_customer_id: str
    anchor: datetime | None


class Configuration:
    """Mapping changes: checked, saved, and announced to the meter before they are answered."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer):
        self.settings = settings
        self.producer = producer
        self.keyed_topic = TopicNames(settings.topic_prefix, settings.app_id).keyed
        self.grace = timedelta(seconds=settings.invoice_grace_seconds)

    # --- metrics -----------------------------------------------------------------------------------

    async def change_metric(self, conn: psycopg.AsyncConnection, change: MetricChange) -> dict[str, Any]:
        """Save a metric mapping (or, for ``reaggregate: dry-run``, say what it would re-aggregate)."""
        tenant, metric, now = change.tenant, change.metric, self.settings.clock.utc()
        async with conn.transaction():
            await mappings.lock_configuration(conn, f"tenant:{tenant}")
            if change.granted_only:
                await meter_grants.check(conn, tenant, change.event_name)
            await push_mapping_changes.lock_streams(conn, tenant, metric=metric)
            current = await mappings.metric_row(conn, tenant, metric)
            since = periods.open_since(now, await mappings.tenant_anchors(conn, tenant), self.grace)
            before: Aggregation = current["aggregation"] if current else "sum"
            customers = await self._customers(conn, tenant)
            streams = {(tenant, metric, c): (change.event_name, cus) for c, cus in customers.items()}
            await self._check_event_name(conn, change, current)
            await self._check_destinations(conn, streams, "stripeMeterEventName", now)
            changes_aggregation = change.aggregation != before
            # what was counted: asked only when it matters (a new mapping, a change of aggregation)
            counted = (
                await counted_since(conn, tenant, metric, since, events=current is None)
                if current is None or changes_aggregation or change.reaggregate
                else Counted(0, 0)
            )
            if change.reaggregate == "dry-run":
                return await self._preview(conn, change, before, since, now)
            if changes_aggregation and counted.counters and change.reaggregate is None:
                raise Conflict(
                    "aggregation",
                    f"{counted.counters} counters of {metric} in open periods (from {iso_seconds(since)})"
                    f' were counted as {before}; changing to {change.aggregation} needs "reaggregate": '
                    f'"dry-run" shows what they become, "apply" re-aggregates them',
                    code="aggregation_in_use",
                )
            row = await mappings.upsert_metric(
                conn,
                mappings.MetricMapping(
                    tenant, metric, change.event_name, change.aggregation, change.lateness_seconds
                ),
                now,
                self.settings.lateness_seconds,
            )
            await destinations.record(conn, ((d, s) for s, d in streams.items()))
            if not change.granted_only:  # an operator's mapping grants its meter: the tenant may keep it
                await meter_grants.grant_within(conn, tenant, change.event_name)
            retried = await push_mapping_changes.mapping_changed(conn, tenant, now, metric=metric)
        reaggregate = changes_aggregation or change.reaggregate == "apply"
        lateness = (
            self.settings.lateness_seconds if row["lateness_seconds"] is None else row["lateness_seconds"]
        )
        horizon = row["dedupe_horizon"]
        update = PolicyUpdate(
            tenant, metric, int(row["version"]), change.aggregation, 1000 * lateness,
            None if horizon is None else int(horizon.timestamp() * 1000),
            int(since.timestamp() * 1000) if reaggregate else None,
        )  # fmt: skip
        await self._announce(update)
        answer: dict[str, Any] = {"row": row, "countersRetried": retried}
        if current is None:
            answer["countedBeforeMapping"] = {
                "since": iso_seconds(since), "counters": counted.counters, "events": counted.events,
                "aggregation": "sum",
            }  # fmt: skip
        if reaggregate:
            answer["reaggregated"] = {
                "from": iso_seconds(since), "counters": counted.counters, "aggregation": change.aggregation,
            }  # fmt: skip
        return answer

    async def delete_metric(
        self, conn: psycopg.AsyncConnection, tenant: str, metric: str, reaggregate: bool
    ) -> dict[str, Any]:
        """Delete a metric mapping: its counters go back to the defaults (a ``sum`` under the default
        lateness), which for a ``count`` or ``last`` metric is a change of aggregation (see above)."""
        now = self.settings.clock.utc()
        async with conn.transaction():
            await mappings.lock_configuration(conn, f"tenant:{tenant}")
            current = await mappings.metric_row(conn, tenant, metric)
            if current is None:
                raise NotFound("metric", f"tenant {tenant} has no mapping for metric {metric}")
            since = periods.open_since(now, await mappings.tenant_anchors(conn, tenant), self.grace)
            changes_aggregation = current["aggregation"] != "sum"
            counted = await counted_since(conn, tenant, metric, since, events=False)
            if changes_aggregation and counted.counters and not reaggregate:
                raise Conflict(
                    "aggregation",
                    f"{counted.counters} counters of {metric} in open periods were counted as"
                    f" {current['aggregation']}; without a mapping the metric is a sum: pass"
                    " reaggregate=apply to re-aggregate them, or keep the mapping",
                    code="aggregation_in_use",
                )
            version = await mappings.delete_metric(conn, tenant, metric, now, self.settings.lateness_seconds)
            assert version is not None
            horizon = await mappings.tombstone_horizon(conn, tenant, metric)
            retried = await push_mapping_changes.mapping_changed(conn, tenant, now, metric=metric)
        since_ms = int(since.timestamp() * 1000) if changes_aggregation or reaggregate else None
        lateness_ms = self.settings.lateness_seconds * 1000
        await self._announce(PolicyUpdate(tenant, metric, version, "sum", lateness_ms, horizon, since_ms))
        return {
            "tenantId": tenant,
            "metric": metric,
            "deleted": True,
            "version": version,
            "counters": retried,
        }

    # --- customers ---------------------------------------------------------------------------------

    async def change_customer(self, conn: psycopg.AsyncConnection, change: CustomerChange) -> dict[str, Any]:
        tenant, customer, now = change.tenant, change.customer, self.settings.clock.utc()
        async with conn.transaction():
            await mappings.lock_configuration(conn, f"tenant:{tenant}", f"stripe:{change.stripe_customer_id}")
            await push_mapping_changes.lock_streams(conn, tenant, customer=customer)
            await self._check_stripe_customer(conn, change)
            events = {m: r["stripe_meter_event_name"] for m, r in (await self._metrics(conn, tenant)).items()}
            streams = {(tenant, m, customer): (e, change.stripe_customer_id) for m, e in events.items()}
            await self._check_destinations(conn, streams, "stripeCustomerId", now)
            row = await mappings.upsert_customer(
                conn, tenant, customer, change.stripe_customer_id, change.anchor
            )
            await destinations.record(conn, ((d, s) for s, d in streams.items()))
            # the customer's hours may belong to other periods now: their whole units are carried anew
            starts = {
                b: periods.holding(b, change.anchor).start
                for b in await push_mapping_changes.buckets_of(conn, tenant, customer)
            }
            await push_mapping_changes.repartition_periods(conn, tenant, customer, starts)
            retried = await push_mapping_changes.mapping_changed(conn, tenant, now, customer=customer)
        return {"row": row, "countersRetried": retried}

    async def delete_customer(
        self, conn: psycopg.AsyncConnection, tenant: str, customer: str
    ) -> dict[str, Any]:
        """Delete a customer mapping: its counters wait (``unmapped``) until it is mapped again; what
        was delivered stays in Stripe."""
        now = self.settings.clock.utc()
        async with conn.transaction():
            await mappings.lock_configuration(conn, f"tenant:{tenant}")
            if not await mappings.delete_customer(conn, tenant, customer):
                raise NotFound("customerRef", f"tenant {tenant} has no mapping for customer {customer}")
            counters = await push_mapping_changes.mapping_changed(conn, tenant, now, customer=customer)
        return {"tenantId": tenant, "customerRef": customer, "deleted": True, "counters": counters}

    # --- checks ------------------------------------------------------------------------------------

    async def _check_event_name(
        self, conn: psycopg.AsyncConnection, change: MetricChange, current: dict[str, Any] | None
    ) -> None:
        """One meter event name per tenant's metric: every customer of the tenant would share it."""
        for metric, row in (await self._metrics(conn, change.tenant)).items():
            if metric != change.metric and row["stripe_meter_event_name"] == change.event_name:
                raise Conflict(
                    "stripeMeterEventName",
                    f"metric {metric} of tenant {change.tenant} sends to meter event {change.event_name!r}"
                    " already: one (meter, Stripe customer) pair takes one counter stream's usage",
                    code="stripe_pair_taken",
                )

    async def _check_stripe_customer(self, conn: psycopg.AsyncConnection, change: CustomerChange) -> None:
        """A Stripe customer belongs to one tenant and one of its customerRefs."""
        for tenant, refs in (await destinations.tenants_mapping(conn, change.stripe_customer_id)).items():
            if tenant != change.tenant:
                raise Conflict(
                    "stripeCustomerId",
                    f"{change.stripe_customer_id} is mapped by another tenant: a Stripe customer belongs to"
                    " one tenant",
                    code="stripe_customer_taken",
                )
            others = [r for r in refs if r != change.customer]
            if others:
                raise Conflict(
                    "stripeCustomerId",
                    f"customerRef {others[0]} of tenant {tenant} is mapped to {change.stripe_customer_id}"
                    " already: one (meter, Stripe customer) pair takes one counter stream's usage",
                    code="stripe_pair_taken",
                )
        # another tenant's stream that sent usage of open periods to this customer, under any meter: its
        # invoice holds that usage still
        foreign = [
            c
            for c in await destinations.customer_claimants(conn, change.stripe_customer_id)
            if c.stream[0] != change.tenant
        ]
        since = self.settings.clock.utc() - LONGEST_PERIOD - self.grace
        holders = await destinations.usage_held(conn, [c.stream for c in foreign], since)
        for claimant in foreign:
            if claimant.maps_there or claimant.destination in holders.get(claimant.stream, set()):
                raise Conflict(
                    "stripeCustomerId",
                    f"{change.stripe_customer_id} is mapped by another tenant, or holds its usage of open"
                    " periods: a Stripe customer belongs to one tenant",
                    code="stripe_customer_taken",
                )

    async def _check_destinations(
        self,
        conn: psycopg.AsyncConnection,
        streams: dict[StreamKey, Destination],
        field: str,
        now: datetime,
    ) -> None:
        """After the change each of ``streams`` sends to its destination: refused when another stream
        sends there, or still holds usage of open periods there (it sent there before), or when one of
        ``streams`` holds usage of open periods at another pair (a remap would leave it there)."""
        if not streams:
            return
        since = now - LONGEST_PERIOD - self.grace
        claimants = [
            c
            for c in await destinations.claimants(conn, streams.values())
            if streams.get(c.stream) != c.destination
        ]
        holders = await destinations.usage_held(conn, [*streams, *(c.stream for c in claimants)], since)
        for claimant in claimants:
            event_name, stripe_customer = claimant.destination
            holds = claimant.destination in holders.get(claimant.stream, set())
            if claimant.maps_there or holds:
                other = "/".join(claimant.stream)
                raise Conflict(
                    field,
                    f"{other} {'sends' if claimant.maps_there else 'sent usage of open periods'} to meter"
                    f" event {event_name!r} of {stripe_customer}: one (meter, Stripe customer) pair takes one"
                    " counter stream's usage",
                    code="stripe_pair_taken",
                )
        for stream, destination in streams.items():
            left = sorted(pair for pair in holders.get(stream, set()) if pair != destination)
            if left:
                event_name, stripe_customer = left[0]
                raise Conflict(
                    field,
                    f"{'/'.join(stream)} sent usage of open periods to meter event {event_name!r} of"
                    f" {stripe_customer}; remapping would leave it billed there and send only later changes"
                    " to the new pair: wait until those periods close, or map a new customerRef or metric",
                    code="usage_left_behind",
                )

    async def _preview(
        self,
        conn: psycopg.AsyncConnection,
        change: MetricChange,
        before: Aggregation,
        since: datetime,
        now: datetime,
    ) -> dict[str, Any]:
        """What ``reaggregate: apply`` would make of each counter of the open periods, from the ledger
        (events the sink has not written yet are not in it); nothing changes."""
        rows = await hours_folded(conn, change.tenant, change.metric, since)
        anchors = {
            c: r.get("billing_anchor") for c, r in (await self._customer_rows(conn, change.tenant)).items()
        }
        counters, total_before, total_after = [], 0, 0
        changes = []
        for h in rows:
            after = view(change.aggregation, h.sum_micros, h.events, h.last_micros, h.adjusted_micros)
            assert after is not None
            now_micros = h.total_micros if h.total_micros is not None else 0
            total_before, total_after = total_before + now_micros, total_after + after
            changes.append((anchors.get(h.customer_ref), h.bucket, after - now_micros))
            counters.append(
                {
                    "customerRef": h.customer_ref, "bucket": iso_hour(int(h.bucket.timestamp() * 1000)),
                    "before": micros_to_number(now_micros), "after": micros_to_number(after),
                    "delta": micros_to_number(after - now_micros), "events": h.events,
                }
            )  # fmt: skip
        names, notes = periods.notes_for(changes, now, self.grace)
        for counter, name in zip(counters, names, strict=True):
            counter["period"] = name
        return {
            "dryRun": True,
            "tenantId": change.tenant,
            "metric": change.metric,
            "aggregation": {"from": before, "to": change.aggregation},
            "from": iso_seconds(since),
            "counters": counters,
            "totals": {
                "before": micros_to_number(total_before),
                "after": micros_to_number(total_after),
                "delta": micros_to_number(total_after - total_before),
            },
            "periods": [{"name": n.period.name, "state": n.state, "counters": n.counters} for n in notes],
            "message": "computed from the ledger; nothing changed. Send the same request with"
            ' "reaggregate": "apply" to change the mapping and re-aggregate these counters',
        }

    async def _announce(self, update: PolicyUpdate) -> None:
        """The change to every keyed partition: the answer waits for the broker."""
        try:
            partitions = await send_policy_update(self.producer, self.keyed_topic, update)
        except KafkaError as exc:
            raise Transient(
                f"mapping version {update.version} of {update.tenant_id}/{update.metric} is saved, but Kafka"
                f" did not take it ({type(exc).__name__}): send the same request again; until then workers"
                " pick it up within 10 s",
                code="not_announced",
            ) from exc
        metrics.MAPPING_CHANGES.inc()
        log.info(
            "mapping %s/%s version %d announced to %d keyed partitions (%s, lateness %d s%s)",
            update.tenant_id, update.metric, update.version, partitions, update.aggregation,
            update.lateness_ms // 1000, ", re-aggregating" if update.reaggregate_from_ms is not None else "",
        )  # fmt: skip

    @staticmethod
    async def _metrics(conn: psycopg.AsyncConnection, tenant: str) -> dict[str, dict[str, Any]]:
        return {r["metric"]: r for r in await mappings.list_rows(conn, "metric_mappings", tenant)}

    @staticmethod
    async def _customer_rows(conn: psycopg.AsyncConnection, tenant: str) -> dict[str, dict[str, Any]]:
        return {r["customer_ref"]: r for r in await mappings.list_rows(conn, "customer_mappings", tenant)}

    async def _customers(self, conn: psycopg.AsyncConnection, tenant: str) -> dict[str, str]:
        return {c: r["stripe_customer_id"] for c, r in (await self._customer_rows(conn, tenant)).items()}
