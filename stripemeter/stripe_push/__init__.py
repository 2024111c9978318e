"""Where usage leaves for Stripe: the writer that pushes counter changes as Billing Meter events."""
