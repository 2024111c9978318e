"""Where events are counted: the worker's stages (the pipeline runtime).

intake      usage.events -> validate -> dead letters | events re-keyed by (tenant, customer)
meter       keyed events -> dedupe, lateness, hour-bucket counters on changelog-backed Faust tables
            (the decisions are ``stripemeter.core.metering``; ``worker/meter.py`` runs them)
checkpoint  changelogs, ledger, too-late records, then watermarks and usage.deltas; then acknowledge
sink        ledger, dead letters and deltas -> PostgreSQL
writer      usage.deltas -> push rows -> Stripe meter events (``stripe_writer.py``; its decisions are
            ``stripemeter.core.push_plan``)
"""
