"""Wire formats: the usage event and its validation, the internal topics' records (keyed items,
ledger items, dedupe entries, usage.late records, deltas, corrections, dead letters), each defined
once with named fields, topic names, partitioning and message packing. The SQL schema is
the top-level ``schemas/migrations/``, shipped here as ``stripemeter.schemas.contract``. Below them
only the domain."""
