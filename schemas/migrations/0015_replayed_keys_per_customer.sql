-- Replay: an idempotency key is one event per (tenant, customer) (the README's "Deduplication"), so a
-- key two customers reused counts once for each, and a replay claims the key for one customer only.
-- Before, a claim (tenant, key) also hid another customer's too-late event with that key for ever.
ALTER TABLE replayed_keys ADD COLUMN customer_ref text;

-- Claims made so far: a correction's events are one customer's (a correction is one counter).
UPDATE replayed_keys r SET customer_ref = c.customer_ref
FROM replay_corrections c
WHERE c.correction_id = r.correction_id;

-- Claims made before corrections were recorded (0012): the replay counted the first received
-- too-late event of the key (its DISTINCT ON then), so the claim is that event's customer's.
UPDATE replayed_keys r SET customer_ref = (
    SELECT e.customer_ref FROM events e
    WHERE e.tenant_id = r.tenant_id AND e.idempotency_key = r.idempotency_key AND e.outcome = 'late'
    ORDER BY e.source_topic, e.source_partition, e.source_offset, e.source_index
    LIMIT 1)
WHERE r.customer_ref IS NULL;

-- A claim whose event is no longer in the ledger: no customer's event can match it ('' is no
-- customerRef); the row stays as the record of what that replay claimed.
UPDATE replayed_keys SET customer_ref = '' WHERE customer_ref IS NULL;

ALTER TABLE replayed_keys ALTER COLUMN customer_ref SET NOT NULL;
ALTER TABLE replayed_keys DROP CONSTRAINT replayed_keys_pkey;
ALTER TABLE replayed_keys ADD PRIMARY KEY (tenant_id, idempotency_key, customer_ref);
