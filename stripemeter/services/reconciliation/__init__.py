"""Reconciliation: proving that Stripe bills what was counted, and correcting it where it may.

A run (``run.Reconciler``) reconciles one tenant's billing period in three steps:
``check`` (local hours against Stripe's summaries: a verdict per item), ``act`` (the corrections the
policy allows, sent to Stripe) and ``report`` (the stored run, the ``reconciliation.drift`` records,
metrics, the log line and the summary returned). ``schedule`` runs every tenant's open periods once per
interval across all workers, reading Stripe only for the items due a read (core/reconcile_due.py);
``build`` makes a Reconciler from the settings.
"""
