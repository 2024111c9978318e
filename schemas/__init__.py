"""Wire formats: the usage event and its validation, the internal topics' records (keyed events,
deltas, corrections, dead letters), topic names, partitioning and message packing; and the SQL
schema (``migrations/``). Below them only the domain."""
