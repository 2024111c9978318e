"""A Kafka cluster of several nodes on loopback, for tests of replication: node 1 is the KRaft controller
and a broker, the others are brokers only, so any of those can lose its disk without touching the
cluster's metadata quorum. Plaintext; the same jars as the local stack's single broker."""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from stripemeter.tools.local.kafka import LocalKafka, _kafka_cluster_id
from stripemeter.tools.local.kafka_security import KafkaSetupError
from stripemeter.tools.local.procs import Managed, port_open, wait_for

CONTROLLER = 1


@dataclass(frozen=True)
class ClusterNode:
    node_id: int
    kafka: LocalKafka  # its ports, data and config directories; kafka.port is the client listener

    @property
    def address(self) -> str:
        return f"{self.kafka.host}:{self.kafka.port}"

    def managed(self) -> Managed:
        return Managed(f"kafka-{self.node_id}", self.kafka.conf_dir / "run", self.kafka.conf_dir / "logs")


class LocalKafkaCluster:
    """``brokers`` nodes in ``root``, on the given client ports (each node's controller port is its
    client port + 1; only node 1's is used)."""

    def __init__(self, template: LocalKafka, root: Path, ports: list[int], heap: str = "256m"):
        self.cluster_id = _kafka_cluster_id()
        self.nodes = [
            ClusterNode(
                n,
                replace(
                    template,
                    port=port,
                    data_dir=root / f"node-{n}" / "data",
                    conf_dir=root / f"node-{n}",
                    heap=heap,
                    scram=None,
                    tls=None,
                ),
            )
            for n, port in enumerate(ports, start=1)
        ]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.address for node in self.nodes)

    def node(self, node_id: int) -> ClusterNode:
        return self.nodes[node_id - 1]

    def properties(self, node: ClusterNode) -> str:
        first = self.node(CONTROLLER).kafka
        voters = f"{CONTROLLER}@{first.host}:{first.controller_port}"
        k = node.kafka
        controller = node.node_id == CONTROLLER
        listeners = f"PLAINTEXT://{k.host}:{k.port}"
        if controller:
            listeners += f",CONTROLLER://{k.host}:{k.controller_port}"
        replicas = min(3, len(self.nodes))
        return "\n".join(
            [
                f"process.roles={'broker,controller' if controller else 'broker'}",
                f"node.id={node.node_id}",
                f"controller.quorum.voters={voters}",
                f"listeners={listeners}",
                f"advertised.listeners=PLAINTEXT://{k.host}:{k.port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={k.data_dir}",
                f"default.replication.factor={replicas}",
                f"offsets.topic.replication.factor={replicas}",
                "offsets.topic.num.partitions=4",
                f"transaction.state.log.replication.factor={replicas}",
                f"transaction.state.log.min.isr={min(2, replicas)}",
                f"share.coordinator.state.topic.replication.factor={replicas}",
                f"share.coordinator.state.topic.min.isr={min(2, replicas)}",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "message.max.bytes=17825792",
                "replica.fetch.max.bytes=17825792",
                "num.network.threads=2",
                "num.io.threads=2",
                # a broker that stops answering leaves the ISR quickly, so writes go on with the others
                "replica.lag.time.max.ms=10000",
                "",
            ]
        )

    def format(self, node: ClusterNode) -> None:
        """Format the node's storage (once) with the cluster's id: a new or replaced disk."""
        k = node.kafka
        if k.formatted():
            return
        k.write_config()  # log4j and a single-node server.properties, replaced below
        props = k.conf_dir / "server.properties"
        props.write_text(self.properties(node))
        result = subprocess.run(
            k.java("kafka.tools.StorageTool", "format", "-t", self.cluster_id, "-c", str(props)),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise KafkaSetupError(f"formatting node {node.node_id} failed:\n{result.stdout}{result.stderr}")

    def start(self, node: ClusterNode) -> None:
        self.format(node)
        k = node.kafka
        props = k.conf_dir / "server.properties"
        props.write_text(self.properties(node))
        node.managed().start(
            k.java("kafka.Kafka", str(props), heap=k.heap, jvm=("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"))
        )

    def start_all(self, timeout: float = 120) -> None:
        self.nodes[0].kafka.install()
        for node in self.nodes:
            self.start(node)
        for node in self.nodes:
            if not wait_for(partial(port_open, node.kafka.host, node.kafka.port), timeout):
                raise KafkaSetupError(f"node {node.node_id} did not open {node.address} in {timeout:g} s")

    def kill(self, node: ClusterNode) -> None:
        """kill -9 of the node's JVM."""
        node.managed().stop(0, sig=signal.SIGKILL)

    def lose_disk(self, node: ClusterNode) -> None:
        """The node's data directory is gone, as with a replaced disk."""
        shutil.rmtree(node.kafka.data_dir, ignore_errors=True)

    def kill_all(self) -> None:
        """The end of a throwaway cluster: nothing of it is kept, so nothing waits for a clean stop."""
        for node in self.nodes:
            self.kill(node)
