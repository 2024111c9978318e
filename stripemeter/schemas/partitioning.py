"""Which partition a key goes to: the same choice as Kafka's default partitioner (murmur2)."""

from __future__ import annotations

from aiokafka.partitioner import murmur2


def keyed_routing_key(tenant_id: str, customer_ref: str) -> str:
    """The key of the keyed topic: a customer's events, and corrections of them, share a partition."""
    return f"{tenant_id}|{customer_ref}"


def delta_routing_key(tenant_id: str, metric: str, customer_ref: str) -> str:
    """The key of usage.deltas: one counter stream's deltas stay in order on one partition."""
    return f"{tenant_id}|{metric}|{customer_ref}"


def partition_for(routing_key: str, partitions: int) -> int:
    """The same partition the Java and aiokafka default partitioners choose for this key."""
    hashed: int = murmur2(routing_key.encode())  # aiokafka is untyped
    return (hashed & 0x7FFFFFFF) % partitions


class Partitioner:
    """``partition_for`` remembered per key: aiokafka's murmur2 is pure Python (2.6 us a call)."""

    LIMIT = 50_000  # about 10 MiB of keys; a miss costs one murmur2

    def __init__(self, partitions: int):
        self.partitions = partitions
        self._known: dict[str, int] = {}

    def __call__(self, routing_key: str) -> int:
        partition = self._known.get(routing_key)
        if partition is None:
            if len(self._known) >= self.LIMIT:
                self._known.clear()
            partition = self._known[routing_key] = partition_for(routing_key, self.partitions)
        return partition
