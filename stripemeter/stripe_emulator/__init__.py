"""A stateful Stripe Billing Meters emulator that the real `stripe` package can talk to.

Point `stripe.StripeClient(key, base_addresses={"api": url, "meter_events": url})` at it. It keeps
customers, meters, meter events and adjustments in memory, answers event summaries from them, and can
inject Stripe's failure modes (see `faults`). Idempotent answers are stored and replayed as Stripe
does (500s included), and test mode's 25 operations per second are enforced. Deliberate differences
from Stripe, kept small:

- Validation that Stripe does asynchronously (unknown customer, missing payload keys) is answered
  synchronously with 400, so tests see it at once.
- Summaries are returned only for windows holding at least one counted event.
- The v2 meter event stream, prices, subscriptions and invoices are not emulated.

Modules: `server` (routes, middleware, create_app/serve/run), `state` (the account), `meters`,
`events`, `summaries` (rules), `wire` / `errors` / `pagination` (Stripe's wire format),
`idempotency`, `faults`, `budget` (operations per second), `control` (the `/_emulator` test
controls), `clock` (ManualClock).
"""

from stripemeter.stripe_emulator.clock import ManualClock
from stripemeter.stripe_emulator.faults import Faults
from stripemeter.stripe_emulator.server import STATE, create_app, run, serve
from stripemeter.stripe_emulator.state import EmulatorState

__all__ = ["STATE", "EmulatorState", "Faults", "ManualClock", "create_app", "run", "serve"]
