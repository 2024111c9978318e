"""PostgreSQL: what must be queried or audited (ledger, counters snapshot, mappings, reports)."""
