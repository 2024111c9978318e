"""Where events are counted: the worker's stages.

intake      usage.events -> validate -> dead letters | events re-keyed by (tenant, customer)
metering    keyed events -> dedupe, lateness, hour-bucket counters (changelog-backed Faust tables)
checkpoint  changelogs, ledger, too-late records, then watermarks and usage.deltas; then acknowledge
sink        ledger, dead letters and deltas -> PostgreSQL
The Stripe writer that reads usage.deltas lives in ``stripemeter.services.stripe_writer``.
"""
