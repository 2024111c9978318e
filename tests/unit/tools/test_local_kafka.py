"""The local broker's configuration: PLAINTEXT, or SASL/SCRAM with ACLs on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stripemeter.domain.config import load_settings
from stripemeter.tools.local.kafka import LocalKafka, server_properties, with_local_ca
from stripemeter.tools.local.kafka_security import KafkaSetupError, ScramUser, check_runnable, scram_user

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
        {**SCRAM, "KAFKA_SECURITY_PROTOCOL": "SSL"},
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


def test_sasl_ssl_broker_serves_tls_with_its_own_ca_which_the_stack_hands_its_clients(tmp_path: Path) -> None:
    settings = load_settings(
        {**SCRAM, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "STRIPEMETER_STATE_DIR": str(tmp_path)}
    )
    kafka = LocalKafka.from_settings(settings)
    assert kafka.tls is not None and kafka.scram is not None
    kafka.tls.ensure()
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(kafka.tls.ca), str(kafka.tls.cert)],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr
    names = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(kafka.tls.cert)],
        capture_output=True,
        text=True,
    )
    assert "IP Address:127.0.0.1" in names.stdout and "DNS:localhost" in names.stdout
    assert kafka.tls.directory.stat().st_mode & 0o777 == 0o700

    props = properties(server_properties("127.0.0.1", 9092, 9093, Path("/d"), kafka.scram, kafka.tls))
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    assert "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config" in props
    assert props["ssl.keystore.type"] == "PEM" and props["ssl.truststore.location"] == str(kafka.tls.ca)
    assert props["ssl.keystore.key"].startswith("-----BEGIN PRIVATE KEY-----\\n")  # one line, \n escaped

    assert with_local_ca(settings).kafka_ssl_cafile == str(kafka.tls.ca)
    assert with_local_ca(load_settings(SCRAM)) == load_settings(SCRAM)  # no TLS: nothing to trust
