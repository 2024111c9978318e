"""Apache Kafka for the local stack: jars from Maven Central, one KRaft node on loopback.

With ``KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT`` and a SCRAM mechanism the client listener asks for
SASL/SCRAM: the user of ``KAFKA_SASL_USERNAME`` / ``KAFKA_SASL_PASSWORD`` is written into the
metadata when the storage is formatted (``kafka-storage format --add-scram``) and is the only super
user of the StandardAuthorizer, so anyone else needs ACLs (docs/kafka-security.md). The controller
listener stays PLAINTEXT on loopback (KRaft controllers cannot check SCRAM: its credentials live in
the metadata they serve).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from stripemeter.domain.config import Settings
from stripemeter.domain.errors import Permanent


class KafkaSetupError(Permanent, RuntimeError):
    pass


@dataclass(frozen=True)
class ScramUser:
    mechanism: str  # SCRAM-SHA-512 or SCRAM-SHA-256
    name: str
    password: str = field(repr=False)

    def jaas(self) -> str:
        """The broker's own login (inter-broker listener), in a JAAS line."""
        return (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f"username={_jaas_quoted(self.name)} password={_jaas_quoted(self.password)};"
        )

    def storage_argument(self) -> str:
        """``--add-scram`` argument of ``kafka-storage format``."""
        return f"{self.mechanism}=[name={_plain(self.name)},password={_plain(self.password)}]"


def _jaas_quoted(value: str) -> str:
    return f'"{_plain(value)}"'


def _plain(value: str) -> str:
    """A name or password as the storage tool's ``[name=...,password=...]`` list and a JAAS line in
    server.properties both take it unescaped: without the characters either would read as syntax."""
    if not value or any(c in value for c in FORBIDDEN):
        raise KafkaSetupError(
            "the local broker's SCRAM user and password must be non-empty, without any of "
            f"{' '.join(FORBIDDEN[:7])} or white space (see KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD)"
        )
    return value


FORBIDDEN = ('"', ",", "[", "]", "=", "\\", ";", " ", "\t", "\n")


def scram_user(settings: Settings) -> ScramUser | None:
    """The local broker's SCRAM user, when the clients are configured for SASL_PLAINTEXT with SCRAM."""
    protocol, mechanism = settings.kafka_security_protocol, settings.kafka_sasl_mechanism
    if protocol != "SASL_PLAINTEXT" or not mechanism.startswith("SCRAM-"):
        return None
    return ScramUser(mechanism, settings.kafka_sasl_username, settings.kafka_sasl_password.value)


def check_runnable(settings: Settings) -> None:
    """The local broker runs PLAINTEXT, or SASL_PLAINTEXT with SCRAM: the clients' settings must match
    one of them before the stack starts it (a remote broker may run anything the clients support)."""
    protocol, mechanism = settings.kafka_security_protocol, settings.kafka_sasl_mechanism
    if protocol != "PLAINTEXT" and scram_user(settings) is None:
        raise KafkaSetupError(
            f"the local broker runs PLAINTEXT or SASL_PLAINTEXT with SCRAM, not {protocol} with {mechanism}; "
            "see KAFKA_SECURITY_PROTOCOL and KAFKA_SASL_MECHANISM"
        )


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
            scram=scram_user(settings),
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
        props.write_text(
            server_properties(self.host, self.port, self.controller_port, self.data_dir, self.scram)
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


def server_properties(
    host: str, port: int, controller_port: int, data_dir: Path, scram: ScramUser | None = None
) -> str:
    """A single combined broker+controller node, sized for one small machine."""
    client = "PLAINTEXT" if scram is None else "SASL_PLAINTEXT"
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
            *([] if scram is None else scram_properties(scram)),
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


def scram_properties(scram: ScramUser) -> list[str]:
    """SASL/SCRAM on the client listener, and ACLs on: only the SCRAM user (and the controller
    listener's loopback principal, which the broker's own registration arrives as) is a super user."""
    mechanism = scram.mechanism.lower()
    return [
        f"sasl.enabled.mechanisms={scram.mechanism}",
        f"sasl.mechanism.inter.broker.protocol={scram.mechanism}",
        f"listener.name.sasl_plaintext.{mechanism}.sasl.jaas.config={scram.jaas()}",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{scram.name};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found=false",
    ]
