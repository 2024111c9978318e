"""The local broker's configuration: PLAINTEXT, or SASL/SCRAM with ACLs on."""

from __future__ import annotations

from pathlib import Path

import pytest

from stripemeter.domain.config import load_settings
from stripemeter.tools.local.kafka import (
    KafkaSetupError,
    LocalKafka,
    ScramUser,
    check_runnable,
    scram_user,
    server_properties,
)

SCRAM = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_USERNAME": "admin",
    "KAFKA_SASL_PASSWORD": "s3cret-pw",
}


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_plaintext_broker_by_default() -> None:
    assert scram_user(load_settings({})) is None
    props = properties(server_properties("127.0.0.1", 9092, 9093, Path("/d")))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert "authorizer.class.name" not in props and "sasl.enabled.mechanisms" not in props


def test_scram_broker_asks_clients_for_scram_and_authorizes_with_acls() -> None:
    user = scram_user(load_settings({**SCRAM, "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"}))
    assert user == ScramUser("SCRAM-SHA-256", "admin", "s3cret-pw")
    props = properties(server_properties("127.0.0.1", 9092, 9093, Path("/d"), user))
    assert props["listeners"] == "SASL_PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "SASL_PLAINTEXT://127.0.0.1:9092"
    assert props["listener.security.protocol.map"] == "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert props["inter.broker.listener.name"] == "SASL_PLAINTEXT"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-256"
    assert props["listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="admin" password="s3cret-pw";'
    )
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["super.users"] == "User:admin;User:ANONYMOUS"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert user is not None
    assert user.storage_argument() == "SCRAM-SHA-256=[name=admin,password=s3cret-pw]"


@pytest.mark.parametrize("password", ["a,b", "a]b", 'a"b', "a b", "a\\b", "a=b", "a;b"])
def test_a_password_the_storage_tool_cannot_take_is_refused_naming_the_variables(password: str) -> None:
    user = scram_user(load_settings({**SCRAM, "KAFKA_SASL_PASSWORD": password}))
    assert user is not None
    with pytest.raises(KafkaSetupError, match="KAFKA_SASL_PASSWORD"):
        user.storage_argument()


@pytest.mark.parametrize(
    "env",
    [
        {**SCRAM, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
        {**SCRAM, "KAFKA_SASL_MECHANISM": "PLAIN"},
    ],
)
def test_the_local_broker_refuses_what_it_cannot_run(env: dict[str, str]) -> None:
    settings = load_settings(env)
    assert LocalKafka.from_settings(settings).scram is None  # Kafka's tools still run against a remote one
    with pytest.raises(KafkaSetupError, match="KAFKA_SECURITY_PROTOCOL"):
        check_runnable(settings)


def test_a_storage_formatted_without_the_scram_user_is_refused_before_the_broker_starts(
    tmp_path: Path,
) -> None:
    kafka = LocalKafka.from_settings(load_settings({**SCRAM, "STRIPEMETER_STATE_DIR": str(tmp_path)}))
    kafka.data_dir.mkdir(parents=True)
    (kafka.data_dir / "meta.properties").write_text("formatted\n")
    with pytest.raises(KafkaSetupError, match="STRIPEMETER_STATE_DIR"):
        kafka.format_storage()
    kafka.scram_marker.write_text("SCRAM-SHA-512 admin\n")
    kafka.format_storage()  # formatted with this user: nothing to do
