-- The Kafka cluster this database was written from. The ledger is keyed by Kafka coordinates (topic,
-- partition, offset) and the counters snapshot by seq, both of which start again on a new cluster:
-- the sink refuses to write into a database claimed by another cluster (stripemeter/db/kafka_cluster.py).
CREATE TABLE kafka_cluster (
    only_row    boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    cluster_id  text        NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);
