-- Where the PostgreSQL sink goes on in each partition it reads: the offset of the next record, written in
-- the same transaction as the rows of the records before it. Every row of a record below it is in this
-- database, whatever Kafka's committed offsets say: after a restore to an earlier point (or a failover to
-- a replica that was behind) the sink goes back to these offsets and writes again what the restore took.
-- Kafka's committed offsets stay for lag monitoring.
CREATE TABLE sink_offsets (
    group_id    text        NOT NULL,  -- the sink's consumer group ({app id}-postgres-sink)
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
