"""Apache Kafka for the local stack: jars from Maven Central, one KRaft node on loopback (secured as
``kafka_security.py`` says when the clients' settings ask for it)."""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from stripemeter.domain.config import Settings
from stripemeter.tools.local.kafka_security import (
    BrokerTls,
    KafkaSetupError,
    ScramUser,
    scram_properties,
    scram_user,
    tls_properties,
)

__all__ = ["KafkaSetupError", "LocalKafka", "server_properties", "with_local_ca"]


@dataclass(frozen=True)
class LocalKafka:
    version: str
    cache_dir: Path  # outside the repository; shared by every checkout
    data_dir: Path  # this stack's log.dirs
    conf_dir: Path
    host: str
    port: int
    heap: str
    scram: ScramUser | None = None  # SASL/SCRAM on the client listener
    tls: BrokerTls | None = None  # and TLS (SASL_SSL)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalKafka:
        first = settings.kafka_bootstrap_servers.split(",")[0]
        host, _, port = first.rpartition(":")
        return cls(
            version=settings.kafka_version,
            cache_dir=settings.cache_dir / "kafka" / settings.kafka_version,
            data_dir=settings.state_dir / "kafka" / "data",
            conf_dir=settings.state_dir / "kafka",
            host=host or "127.0.0.1",
            port=int(port),
            heap=settings.kafka_heap,
            scram=(scram := scram_user(settings)),
            tls=_local_tls(settings) if scram and settings.kafka_security_protocol == "SASL_SSL" else None,
        )

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def libs(self) -> Path:
        return self.cache_dir / "libs"

    @property
    def classpath(self) -> str:
        return f"{self.libs}/*"

    def installed(self) -> bool:
        return (self.libs / f"kafka_2.13-{self.version}.jar").exists()

    def install(self) -> None:
        """Resolve the broker and its dependencies with Maven (once per version)."""
        if self.installed():
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaSetupError("Maven (mvn) is needed to fetch the Kafka jars; install it first")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        pom = self.cache_dir / "pom.xml"
        pom.write_text(resources.files("stripemeter.tools.local").joinpath("kafka/pom.xml").read_text())
        tmp = self.cache_dir / "libs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-Dkafka.version={self.version}",
            f"-DoutputDirectory={tmp}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise KafkaSetupError(
                f"mvn could not fetch Kafka {self.version}:\n{result.stdout}{result.stderr}"
            )
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)

    def write_config(self) -> Path:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        log4j = self.conf_dir / "log4j2.properties"
        log4j.write_text(
            resources.files("stripemeter.tools.local").joinpath("kafka/log4j2.properties").read_text()
        )
        props = self.conf_dir / "server.properties"
        props.touch(mode=0o600, exist_ok=True)  # it may hold the broker's own SCRAM password
        props.chmod(0o600)
        if self.tls is not None:
            self.tls.ensure()
        props.write_text(
            server_properties(self.host, self.port, self.controller_port, self.data_dir, self.scram, self.tls)
        )
        return props

    def java(self, main_class: str, *args: str, heap: str = "256m", jvm: tuple[str, ...] = ()) -> list[str]:
        """A command line running ``main_class`` from the broker jars (also Kafka's own tools)."""
        java = shutil.which("java")
        if java is None:
            raise KafkaSetupError("Java 17+ is needed to run Kafka")
        return [
            java,
            f"-Xms{heap}",
            f"-Xmx{heap}",
            *jvm,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.conf_dir / 'log4j2.properties'}",
            "-cp",
            self.classpath,
            main_class,
            *args,
        ]

    def formatted(self) -> bool:
        return (self.data_dir / "meta.properties").exists()

    @property
    def scram_marker(self) -> Path:
        """Names the SCRAM user the storage was formatted with (users live in the metadata)."""
        return self.data_dir / "stripemeter-scram-user"

    def format_storage(self) -> None:
        """Format the KRaft storage once (with the SCRAM user, if any); a formatted directory is never
        touched again, so a SCRAM user it was not formatted with is refused here, not at each login."""
        if self.formatted():
            self._check_scram_user()
            return
        props = self.write_config()
        args = ["format", "-t", _kafka_cluster_id(), "-c", str(props)]
        if self.scram is not None:
            args += ["--add-scram", self.scram.storage_argument()]
        result = subprocess.run(self.java("kafka.tools.StorageTool", *args), capture_output=True, text=True)
        if result.returncode != 0:
            raise KafkaSetupError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")
        if self.scram is not None:
            self.scram_marker.write_text(f"{self.scram.mechanism} {self.scram.name}\n")

    def _check_scram_user(self) -> None:
        if self.scram is None:
            return
        wanted = f"{self.scram.mechanism} {self.scram.name}"
        formatted = self.scram_marker.read_text().strip() if self.scram_marker.exists() else "no SCRAM user"
        if formatted != wanted:
            raise KafkaSetupError(
                f"the local broker's storage in {self.data_dir} was formatted with {formatted}, "
                f"not {wanted}: SCRAM users are added when the storage is formatted; use a fresh "
                "STRIPEMETER_STATE_DIR (or remove that directory: the broker then starts empty)"
            )

    def broker_command(self) -> list[str]:
        props = self.write_config()
        return self.java(
            "kafka.Kafka", str(props), heap=self.heap, jvm=("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20")
        )


def _kafka_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (22 chars).

    Like Kafka's own Uuid.randomUuid, never one starting with "-": the storage tool's argument
    parser would take it for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _local_tls(settings: Settings) -> BrokerTls:
    return BrokerTls(settings.state_dir / "kafka" / "tls")


def with_local_ca(settings: Settings) -> Settings:
    """The clients' settings for the local broker: with TLS and no CA file of their own, the stack's CA."""
    kafka = LocalKafka.from_settings(settings)
    if kafka.tls is None or settings.kafka_ssl_cafile:
        return settings
    return settings.with_overrides(kafka_ssl_cafile=str(kafka.tls.ca))


def server_properties(
    host: str,
    port: int,
    controller_port: int,
    data_dir: Path,
    scram: ScramUser | None = None,
    tls: BrokerTls | None = None,
) -> str:
    """A single combined broker+controller node, sized for one small machine."""
    client = "PLAINTEXT" if scram is None else "SASL_SSL" if tls is not None else "SASL_PLAINTEXT"
    security = [
        *([] if scram is None else scram_properties(client, scram)),
        *([] if tls is None else tls_properties(tls)),
    ]
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{controller_port}",
            f"listeners={client}://{host}:{port},CONTROLLER://{host}:{controller_port}",
            f"advertised.listeners={client}://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map={client}:{client},CONTROLLER:PLAINTEXT",
            f"inter.broker.listener.name={client}",
            *security,
            f"log.dirs={data_dir}",
            "num.partitions=4",
            "default.replication.factor=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # Tests and the demo start consumers right after topics; no need to wait for more members.
            "group.initial.rebalance.delay.ms=0",
            # Topics are code (`stripemeter topics create`); Faust creates its own internal ones.
            "auto.create.topics.enable=false",
            "message.max.bytes=17825792",
            "replica.fetch.max.bytes=17825792",
            "num.network.threads=2",
            "num.io.threads=4",
            "log.retention.check.interval.ms=60000",
            "",
        ]
    )
