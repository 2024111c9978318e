"""A stateful Stripe Billing Meters emulator that the real `stripe` package can talk to.

Point `stripe.StripeClient(key, base_addresses={"api": url, "meter_events": url})` at it. It keeps
customers, meters, meter events and adjustments in memory (with a state file, also on disk), answers
event summaries from them, bills them like Stripe (products, metered prices, subscriptions, invoices
that stay drafts for an hour after each period end while their quantities follow the meter, invoice
items, test clocks, and `invoice.*` v1 snapshot events; see `billing`), and can inject Stripe's failure
modes (see `faults`). Idempotent answers are stored and replayed as Stripe does (500s included), test
mode's 25 operations per second are enforced, and requests are accepted or refused as Stripe's
stripe-mock does (tests/integration/test_stripe_mock.py), or more strictly where Stripe's spec or docs
say so.
Deliberate differences from Stripe, kept small:

- By default, validation that Stripe does asynchronously (unknown meter or customer, missing payload
  keys, bad values, timestamps out of range) is answered synchronously with 400, so tests see it at
  once. With `async_validation` it is done as Stripe does it: the event is answered 200, then
  dropped and reported (`v1.billing.meter.error_report_triggered`, or `...no_meter_found` when no
  meter has the name) to the configured webhook. That validation is immediate, and a report covers
  one event (Stripe batches them per meter and time window); a dropped event's identifier is not
  kept reserved (unknown at Stripe).
- Summaries are returned only for windows holding at least one counted event.
- Billing covers subscriptions to metered prices only (one currency and interval each), without
  payments (a finalized invoice with an amount due stays `open`), taxes, discounts, prorations,
  cancellations or the 72 h wait for `invoice.created` deliveries; line amounts with fractional
  unit amounts round half up. Meter event timestamps are checked against the emulator's clock, also
  for customers on a test clock.
- The v2 meter event stream is not emulated; of API v2 only `GET /v2/core/events/{id}` exists, for
  the error reports.

Modules: `server` (routes, middleware, create_app/serve/run), `state` (the account), `meters`,
`events`, `summaries` (rules), `billing` (subscriptions, invoices, invoice items, what happens as
time passes), `catalog` (products, prices), `invoices` (invoice, line and invoice item objects),
`periods` (billing periods), `test_clocks`, `wire` / `errors` / `pagination` (Stripe's wire format),
`idempotency`, `faults`, `budget` (operations per second), `webhooks` (signed deliveries: error
reports as v2 events, billing changes as v1 snapshot events), `control` (the `/_emulator` test
controls), `clock` (ManualClock), `persistence` (customers, meters and meter events kept in a file
across restarts, as the local stack runs it), `seed` (a meter and a customer to map, made once).
"""

from stripemeter.tools.stripe_emulator.faults import Faults
from stripemeter.tools.stripe_emulator.manual_clock import ManualClock
from stripemeter.tools.stripe_emulator.server import STATE, create_app, run, serve
from stripemeter.tools.stripe_emulator.state import EmulatorState

__all__ = ["STATE", "EmulatorState", "Faults", "ManualClock", "create_app", "run", "serve"]
