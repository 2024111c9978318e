"""Which Kafka cluster a database belongs to (table ``kafka_cluster``, one row).

The ledger's key is where an event was read (topic, partition, offset, position) and the counters
snapshot keeps the highest seq. A new cluster starts offsets and seqs at 0 again, so its events would
collide with the old rows and be dropped without a word (seen: a fresh broker with the dev database
kept 31 of 58 demo events). The sink claims the database for its cluster at start and stops if another
cluster claimed it first. Recreating a topic inside the same cluster is not detected: Kafka's topic IDs
are not exposed by the client used here.
"""

from __future__ import annotations

import psycopg


class ClusterMismatch(RuntimeError):
    """This database's ledger was written from another Kafka cluster."""


async def claim(conn: psycopg.AsyncConnection, cluster_id: str, bootstrap: str) -> None:
    """Claim the database for ``cluster_id`` if unclaimed; raise ClusterMismatch if another has it."""
    await conn.execute(
        "INSERT INTO kafka_cluster (cluster_id) VALUES (%s) ON CONFLICT (only_row) DO NOTHING", (cluster_id,)
    )
    cur = await conn.execute("SELECT cluster_id, claimed_at FROM kafka_cluster")
    row = await cur.fetchone()
    assert row is not None
    if row[0] != cluster_id:
        raise ClusterMismatch(
            f"this database holds the ledger of Kafka cluster {row[0]} (since {row[1]:%Y-%m-%d %H:%M} UTC), "
            f"but the broker at {bootstrap} is cluster {cluster_id}: its offsets would collide with the "
            "ledger's keys and events would be dropped. Point DATABASE_URL at a database of its own "
            "for this cluster (or empty this one)."
        )
