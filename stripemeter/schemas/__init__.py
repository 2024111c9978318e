"""Wire formats: the usage event and its validation, the internal topics' records (keyed events,
deltas, corrections, dead letters), topic names, partitioning and message packing. The SQL schema is
the top-level ``schemas/migrations/``, shipped here as ``stripemeter.schemas.contract``. Below them
only the domain."""
