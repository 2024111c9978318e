"""Kafka's own command-line tools, run from the broker jars the local stack installs.

The ``bin/*.sh`` wrappers are not part of the Maven artifacts, so this maps each tool's usual name
to its main class (checked against the 4.3.1 jars) and fills in ``--bootstrap-server`` from the
settings when the caller did not pass one, and ``--command-config`` with the client's security
settings when Kafka is not PLAINTEXT (``client_auth.write_tool_properties``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from stripemeter.domain.errors import Invalid


@dataclass(frozen=True)
class KafkaTool:
    main_class: str
    takes_bootstrap: bool = True  # accepts --bootstrap-server (the offline tools do not)


# name (as in Kafka's bin/, without ".sh") -> main class
KAFKA_TOOLS: dict[str, KafkaTool] = {
    "kafka-topics": KafkaTool("org.apache.kafka.tools.TopicCommand"),
    "kafka-consumer-groups": KafkaTool("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"),
    "kafka-console-consumer": KafkaTool("org.apache.kafka.tools.consumer.ConsoleConsumer"),
    "kafka-console-producer": KafkaTool("org.apache.kafka.tools.ConsoleProducer"),
    "kafka-get-offsets": KafkaTool("org.apache.kafka.tools.GetOffsetShell"),
    "kafka-configs": KafkaTool("kafka.admin.ConfigCommand"),
    "kafka-groups": KafkaTool("org.apache.kafka.tools.GroupsCommand"),
    "kafka-delete-records": KafkaTool("org.apache.kafka.tools.DeleteRecordsCommand"),
    "kafka-log-dirs": KafkaTool("org.apache.kafka.tools.LogDirsCommand"),
    "kafka-metadata-quorum": KafkaTool("org.apache.kafka.tools.MetadataQuorumCommand"),
    "kafka-broker-api-versions": KafkaTool("org.apache.kafka.tools.BrokerApiVersionsCommand"),
    "kafka-transactions": KafkaTool("org.apache.kafka.tools.TransactionsCommand"),
    "kafka-acls": KafkaTool("org.apache.kafka.tools.AclCommand"),
    "kafka-features": KafkaTool("org.apache.kafka.tools.FeatureCommand"),
    "kafka-leader-election": KafkaTool("org.apache.kafka.tools.LeaderElectionCommand"),
    "kafka-reassign-partitions": KafkaTool("org.apache.kafka.tools.reassign.ReassignPartitionsCommand"),
    "kafka-consumer-perf-test": KafkaTool("org.apache.kafka.tools.ConsumerPerformance"),
    "kafka-dump-log": KafkaTool("org.apache.kafka.tools.DumpLogSegments", takes_bootstrap=False),
    "kafka-storage": KafkaTool("kafka.tools.StorageTool", takes_bootstrap=False),
}

# a client properties file, under the names the tools have used for it (4.x takes --command-config)
CONFIG_FLAGS = ("--command-config", "--consumer.config", "--producer.config")

# Tools log through log4j2; without a config they print INFO lines among their output.
TOOLS_LOG4J = """status = error
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
"""


class UnknownTool(Invalid, LookupError):
    """A Kafka tool name this project does not know: ``field`` is ``tool``, ``name`` the name given."""

    code = "unknown_tool"

    def __init__(self, name: str) -> None:
        detail = f"unknown Kafka tool {name!r}; known: {', '.join(tool_names())}"
        super().__init__("tool", detail, message=detail)
        self.name = name


def tool_names() -> list[str]:
    return sorted(KAFKA_TOOLS)


def tool_args(
    name: str, args: list[str], bootstrap: str, command_config: Path | None = None
) -> tuple[str, list[str]]:
    """Main class and arguments (pure); ``--bootstrap-server`` is added when the tool takes one and
    neither it nor ``--bootstrap-controller`` was given, ``--command-config`` likewise when there is
    one and the caller gave none. ``kafka-topics.sh`` works as a name too."""
    tool = KAFKA_TOOLS.get(name.removesuffix(".sh"))
    if tool is None:
        raise UnknownTool(name)
    given = any(a.split("=", 1)[0] in ("--bootstrap-server", "--bootstrap-controller") for a in args)
    asks_help = any(a in ("-h", "--help", "--version") for a in args)
    if tool.takes_bootstrap and not given and not asks_help:
        args = ["--bootstrap-server", bootstrap, *args]
    configured = any(a.split("=", 1)[0] in CONFIG_FLAGS for a in args)
    if command_config is not None and tool.takes_bootstrap and not configured and not asks_help:
        args = ["--command-config", str(command_config), *args]
    return tool.main_class, args


def tool_command(
    name: str,
    args: list[str],
    bootstrap: str,
    libs: Path,
    log_config: Path,
    heap: str = "256m",
    command_config: Path | None = None,
) -> list[str]:
    """The full ``java`` command line running tool ``name`` from the jars in ``libs``."""
    main_class, args = tool_args(name, args, bootstrap, command_config)
    java = shutil.which("java") or "java"
    return [
        java,
        f"-Xmx{heap}",
        "-XX:+UseSerialGC",  # a short-lived client on a small machine
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log_config}",
        "-cp",
        f"{libs}/*",
        main_class,
        *args,
    ]


def write_log_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tools-log4j2.properties"
    if not path.exists() or path.read_text() != TOOLS_LOG4J:
        path.write_text(TOOLS_LOG4J)
    return path
