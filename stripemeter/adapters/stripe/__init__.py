"""Stripe's API: the client, the shared call budget, meter lookups and the reader of event summaries."""
