"""Reconciliation: proving that Stripe holds what stripemeter counted, per customer and period.

``periods`` names billing periods, ``compare`` decides an item's status and cause (pure),
``stripe_reader`` reads Stripe's event summaries, ``runner`` runs one cycle end to end and
``schedule`` runs it periodically inside a worker.
"""
