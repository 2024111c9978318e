"""`stripemeter demo`: the whole story on the local stack, with the Stripe emulator.

1. usage for three customers over three hours, with duplicates and late events inside the window,
   is counted exactly once and reaches Stripe;
2. during a Stripe outage more usage arrives: reconciliation shows the drift and its cause;
3. the outage ends, the writer catches up; too-late events (older than the window) are waiting;
4. a replay dry-run shows what they would change, apply counts them, and Stripe follows;
5. reconciliation shows parity, and a stray meter event in Stripe is found and aligned;
6. a billing cycle on a Stripe test clock ends at an invoice the guard holds until proven, then
   finalizes with the exact quantity (tools/demo_invoice.py).

Each run uses its own tenant, so reruns tell the same story.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.domain.config import Settings
from stripemeter.domain.timefmt import iso_millis
from stripemeter.schemas.topics import TopicNames
from stripemeter.tools.demo_invoice import invoice_chapter

Say = Callable[[str], None]

CUSTOMERS = ("acme-42", "globex-7", "initech-3")
EVENT_NAME = "demo_api_requests"
BUSY_ATTEMPTS = 10  # a 409 busy is asked again after its Retry-After, this many times in all


class Http:
    """Tiny JSON (and Stripe-style form) client: the demo talks to the API and the emulator like a user."""

    def __init__(self, base: str, headers: dict[str, str] | None = None):
        self.base = base.rstrip("/")
        self.headers = headers or {}

    def call(self, method: str, path: str, body: Any = None, form: dict[str, str] | None = None) -> Any:
        data, headers = None, dict(self.headers)
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        for attempt in range(BUSY_ATTEMPTS):
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as exc:
                # the same work running (e.g. the worker's scheduled reconciliation of this tenant):
                # 409 busy, come back after Retry-After, as any client should
                wait = exc.headers.get("Retry-After")
                if exc.code != 409 or wait is None or attempt == BUSY_ATTEMPTS - 1:
                    raise
                time.sleep(float(wait))
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()

    def every(self, path: str, field: str) -> list[Any]:
        """Every item of a list endpoint's ``field``, page after page (``nextCursor``)."""
        items: list[Any] = []
        cursor = None
        while True:
            joint = "&" if "?" in path else "?"
            page = self.call("GET", path + (f"{joint}cursor={urllib.parse.quote(cursor)}" if cursor else ""))
            items.extend(page[field])
            cursor = page.get("nextCursor")
            if not cursor:
                return items


def api_auth(settings: Settings) -> dict[str, str]:
    """The local stack's API key as a header (the stack writes it when it starts)."""
    from stripemeter.services.api_keys import local_key_file

    path = local_key_file(settings)
    if not settings.auth_enabled or not path.exists():
        return {}
    return {"Authorization": f"Bearer {path.read_text().strip()}"}


def usage(tenant: str, customer: str, ts: datetime, quantity: int, key: str) -> dict[str, Any]:
    return {
        "tenantId": tenant,
        "metric": "requests",
        "customerRef": customer,
        "quantity": quantity,
        "ts": iso_millis(ts),
        "idempotencyKey": key,
    }


def first_batch(tenant: str, now: datetime) -> list[dict[str, Any]]:
    """Three hours of calls; the newest hour first, then two late hours (inside the 48 h window)."""
    events = []
    for hours_ago in (0, 1, 2):
        hour = (now - timedelta(hours=hours_ago)).replace(minute=0, second=0, microsecond=0)
        for n, customer in enumerate(CUSTOMERS):
            for i in range(4 + n):
                ts = min(hour + timedelta(minutes=5 + i), now)
                events.append(usage(tenant, customer, ts, 10 * (i + 1), f"{customer}-{hours_ago}-{i}"))
    return events


async def send(settings: Settings, messages: list[Any]) -> None:
    names = TopicNames(settings.topic_prefix, settings.app_id)
    producer = AIOKafkaProducer(**client_kwargs(settings.kafka), acks="all")
    await producer.start()
    try:
        for message in messages:
            await producer.send(names.events, orjson.dumps(message))
        await producer.flush()
    finally:
        await producer.stop()


def distinct_total(events: list[dict[str, Any]]) -> int:
    seen: dict[str, int] = {}
    for e in events:
        seen.setdefault(e["idempotencyKey"], e["quantity"])
    return sum(seen.values())


def wait(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


class Demo:
    def __init__(self, settings: Settings, say: Say, tenant: str):
        from stripemeter.tools.local.stack import emulator_url

        self.settings = settings
        self.say = say
        self.tenant = tenant
        self.api = Http(f"http://{settings.api_host}:{settings.api_port}", api_auth(settings))
        self.stripe = Http(emulator_url(settings), {"Authorization": "Bearer sk_test_local_emulator"})
        self.periods: set[str] = set()  # the billing periods the story's usage falls in

    # --- setup ---------------------------------------------------------------------------------

    def setup_stripe(self) -> None:
        meters = self.stripe.call("GET", "/v1/billing/meters?limit=100")["data"]
        if not any(m["event_name"] == EVENT_NAME for m in meters):
            self.stripe.call(
                "POST",
                "/v1/billing/meters",
                form={
                    "display_name": "API requests",
                    "event_name": EVENT_NAME,
                    "default_aggregation[formula]": "sum",
                    "customer_mapping[type]": "by_id",
                    "customer_mapping[event_payload_key]": "stripe_customer_id",
                    "value_settings[event_payload_key]": "value",
                },
            )
        self.api.call(
            "PUT",
            f"/v1/mappings/{self.tenant}/requests",
            {"stripeMeterEventName": EVENT_NAME, "aggregation": "sum"},
        )
        for customer in CUSTOMERS:
            cus = self.stripe.call("POST", "/v1/customers", form={"email": f"{customer}@example.com"})["id"]
            self.api.call("PUT", f"/v1/customers/{self.tenant}/{customer}", {"stripeCustomerId": cus})

    # --- views ---------------------------------------------------------------------------------

    def counters(self) -> list[dict[str, Any]]:
        """The writer's view per counter: local total, units pushed, status."""
        counters: list[dict[str, Any]] = self.api.every(
            f"/v1/stripe/pushes?tenantId={self.tenant}&limit=1000", "counters"
        )
        return counters

    def local_total(self) -> float:
        total: float = sum(c["local"] for c in self.counters())
        return total

    def stripe_total(self) -> float:
        total: float = sum(c["pushed"] for c in self.counters())
        return total

    def synced(self) -> bool:
        counters = self.counters()
        return bool(counters) and all(c["status"] == "synced" for c in counters)

    def delivered(self, total: float) -> bool:
        """Counted ``total`` and every counter synced to Stripe: one look at the writer's state."""
        counters = self.counters()
        return sum(c["local"] for c in counters) == total and all(c["status"] == "synced" for c in counters)

    def note_usage(self, events: list[dict[str, Any]]) -> None:
        """Remember the billing periods (UTC months here: no billing anchors) the usage falls in."""
        self.periods |= {e["ts"][:7] for e in events}

    def reconcile(self, align: str = "within_epsilon") -> list[dict[str, Any]]:
        """One reconciliation run for each period the story's usage falls in, oldest first."""
        return [
            self.api.call(
                "POST",
                "/v1/reconciliation/run",
                {"tenantId": self.tenant, "metric": "requests", "period": period, "align": align},
            )
            for period in sorted(self.periods)
        ]

    def show_summary(self) -> list[dict[str, Any]]:
        """The latest verdicts of every period the story's usage falls in, oldest first."""
        summaries = []
        for period in sorted(self.periods):
            query = urllib.parse.urlencode({"tenantId": self.tenant, "metric": "requests", "period": period})
            summary = self.api.call("GET", f"/v1/reconciliation/summary?{query}")
            t = summary["totals"]
            self.say(
                f"  summary {summary['period']['name']}: status {summary['status'].upper()}  "
                f"local {t['local']}  stripe {t['stripe']}  diff {t['diffAbs']} ({t['diffPct']:.2%})"
            )
            for item in summary["items"]:
                causes = "; ".join(_cause(c) for c in item["causes"]) or "-"
                pending = f"  in flight {item['inFlight']}" if item["inFlight"] else ""
                self.say(
                    f"    {item['customerRef']:10} local {item['local']:>5}  stripe {item['stripe']:>5}"
                    f"  {item['status']:14} {item['action']:8}{pending}  {causes}"
                )
            summaries.append(summary)
        return summaries

    def replay(self, mode: str) -> dict[str, Any]:
        report: dict[str, Any] = self.api.call(
            "POST",
            "/v1/replay",
            {"tenantId": self.tenant, "metrics": ["requests"], "since": "-P4D", "until": "now", "mode": mode},
        )
        t = report["totals"]
        self.say(
            f"  {mode}: {report['eventsScanned']} events scanned, {report['eventsReplayed']} too late,"
            f" total {t['before']} -> {t['after']} (delta {t['delta']}), applied={report['applied']}"
        )
        for c in report["counters"]:
            self.say(
                f"    {c['customerRef']:10} {c['bucket']} (period {c['period']})"
                f"  {c['before']} -> {c['after']}  ({c['delta']:+})"
            )
        for warning in report["warnings"]:
            self.say(f"    warning: {warning}")
        return report

    # --- the story -------------------------------------------------------------------------------

    def run(self) -> bool:
        say, settings, now = self.say, self.settings, self.settings.clock.utc()
        say(f"== tenant {self.tenant}: a meter and three customers in the Stripe emulator, and the mappings")
        self.setup_stripe()

        events = first_batch(self.tenant, now)
        duplicates = events[::5]
        say(
            f"== 1. {len(events)} usage events over three hours (the two older hours arrive late), "
            f"plus {len(duplicates)} duplicates"
        )
        self.note_usage(events)
        say(f"  their billing periods: {', '.join(sorted(self.periods))}")
        asyncio.run(send(settings, [events[:20], *events[20:], duplicates]))
        expected = distinct_total(events)
        wait("usage counted and pushed", lambda: self.delivered(expected))
        say(f"  counted {self.local_total():g} (expected {expected}); Stripe has {self.stripe_total():g}")

        say("== 2. Stripe outage: every meter-event call fails with 500 while more usage arrives")
        self.stripe.call(
            "POST", "/_emulator/faults", {"server_error_rate": 1.0, "path_prefix": "/v1/billing/meter_events"}
        )
        more = [usage(self.tenant, CUSTOMERS[0], now, 50, f"outage-{i}") for i in range(4)]
        self.note_usage(more)
        asyncio.run(send(settings, [more]))
        expected += distinct_total(more)
        wait("the new usage counted", lambda: self.local_total() == expected)
        say(f"  waiting {settings.reconcile_settle_seconds:.0f} s (younger changes are in flight, not drift)")
        time.sleep(settings.reconcile_settle_seconds + 1)
        self.reconcile()
        self.show_summary()

        say("== 3. the outage ends; the writer catches up. Too-late events (60 h old, window 48 h) arrive")
        self.stripe.call("POST", "/_emulator/faults", {"server_error_rate": 0.0})
        old = (now - timedelta(hours=60)).replace(minute=0, second=0, microsecond=0)  # one hour, one period
        late = [
            usage(self.tenant, c, old + timedelta(minutes=i), 5, f"late-{c}-{i}")
            for c in CUSTOMERS
            for i in range(3)
        ]
        self.note_usage(late)
        say(f"  they fall in {late[0]['ts'][:7]}; the story spans {', '.join(sorted(self.periods))}")
        asyncio.run(send(settings, [late]))
        wait("the writer in sync", self.synced, timeout=120)
        wait("the too-late events in the ledger", lambda: self._late_in_ledger() >= len(late))
        self.reconcile()
        self.show_summary()

        say("== 4. replay the last four days: dry-run first (changes nothing), then apply")
        dry = self.replay("dry-run")
        self.replay("apply")
        expected += distinct_total(late)
        wait("the replayed usage pushed", lambda: self.delivered(expected), timeout=120)
        say("  and apply once more (idempotent):")
        again = self.replay("apply")

        say("== 5. reconciliation after the replay; then a stray meter event (+1) appears in Stripe")
        self.reconcile()
        self.show_summary()
        customer_id = self.api.call("GET", f"/v1/customers/{self.tenant}")["customers"][0]["stripeCustomerId"]
        # into this hour, the current period's busiest for acme-42 (so +1 stays within epsilon), once
        # its last change has settled
        time.sleep(settings.reconcile_settle_seconds + 1)
        stray_hour = now.replace(minute=0, second=0, microsecond=0)
        self.stripe.call(
            "POST",
            "/v1/billing/meter_events",
            form={
                "event_name": EVENT_NAME,
                "payload[stripe_customer_id]": customer_id,
                "payload[value]": "1",
                "timestamp": str(int(stray_hour.timestamp())),
            },
        )
        for report in self.reconcile():
            for a in report["adjusted"]:
                say(f"  aligned {a['customerRef']} {a['bucket']} by {a['value']:+} in Stripe")
        final = self.reconcile()
        summaries = self.show_summary()
        local = sum(s["totals"]["local"] for s in summaries)
        ok = (
            all(s["status"] == "parity" for s in summaries)
            and local == expected
            and dry["totals"]["delta"] == distinct_total(late)
            and again["totals"]["delta"] == 0
            and all(report["status"] == "parity" for report in final)
        )
        verdict = "PARITY" if ok else "NOT AT PARITY"
        say(f"== {verdict}: local {local}, expected {expected} (periods {', '.join(sorted(self.periods))})")
        invoiced = invoice_chapter(self, lambda messages: asyncio.run(send(settings, messages)), wait)
        say(f"== {'INVOICE PROVEN' if invoiced else 'INVOICE NOT PROVEN'}")
        return ok and invoiced

    def _late_in_ledger(self) -> int:
        query = urllib.parse.urlencode({"tenantId": self.tenant, "metric": "requests", "limit": 1000})
        return sum(1 for e in self.api.every(f"/v1/events?{query}", "events") if e["outcome"] == "late")


def _same_clock(settings: Settings, say: Say) -> bool:
    """A stack already running keeps the clock it started with: the story needs the demo's."""
    from stripemeter.tools.local.stack import emulator_url, uses_emulator

    if not uses_emulator(settings):
        return True
    theirs = Http(emulator_url(settings)).call("GET", "/_emulator/clock")["now"]
    if abs(theirs - settings.clock()) < 60:
        return True
    seen, mine = datetime.fromtimestamp(theirs, tz=UTC), settings.clock.utc()
    say(
        f"the running stack lives at {seen:%Y-%m-%d %H:%M} UTC, the demo at {mine:%Y-%m-%d %H:%M} UTC:"
        " stop it first (stripemeter stack down)"
    )
    return False


def _cause(cause: dict[str, Any]) -> str:
    extra = f" ({cause['count']} events, total {cause['total']:g})" if cause["code"] == "late_events" else ""
    code: str = cause["code"]
    return code + extra


def run_demo(settings: Settings, say: Say, tenant: str | None = None) -> int:
    from stripemeter.tools.local.stack import app_settings, up

    say("== bringing up the local stack (Kafka, PostgreSQL, Stripe emulator, worker, API)")
    if settings.clock_offset_seconds:
        say(f"   living at {settings.clock.utc():%Y-%m-%d %H:%M:%S} UTC: the stack starts with that clock")
    up(settings, say)
    if not _same_clock(settings, say):
        return 1
    tenant = tenant or f"demo-{uuid.uuid4().hex[:8]}"  # never one of an earlier run, whatever the clock
    try:
        ok = Demo(app_settings(settings), say, tenant).run()
    except urllib.error.HTTPError as exc:
        say(f"demo failed: {exc.code} {exc.reason} on {exc.url}: {exc.read()[:500]!r}")
        return 1
    say("the stack keeps running: README.md's five-minute tour goes on from here (`stack down` stops it)")
    return 0 if ok else 1
