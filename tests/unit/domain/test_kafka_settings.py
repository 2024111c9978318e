"""Kafka security settings: read, validated naming the variable, and the same for every client."""

from __future__ import annotations

from pathlib import Path

import pytest

from stripemeter.domain.config import ConfigError, load_settings
from stripemeter.domain.kafka_access import KafkaAccess

SCRAM = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_USERNAME": "meter",
    "KAFKA_SASL_PASSWORD": "pa55word",
}


def test_plaintext_by_default() -> None:
    access = load_settings({}).kafka
    assert access == KafkaAccess("127.0.0.1:9092")
    assert not access.sasl and not access.tls


def test_scram_settings_reach_the_access_and_the_password_never_shows() -> None:
    settings = load_settings({**SCRAM, "KAFKA_BOOTSTRAP_SERVERS": "k1:9093,k2:9093"})
    access = settings.kafka
    assert (access.bootstrap, access.security_protocol, access.sasl_mechanism) == (
        "k1:9093,k2:9093",
        "SASL_PLAINTEXT",
        "SCRAM-SHA-512",
    )
    assert (access.username, access.password) == ("meter", "pa55word")
    assert access.sasl and not access.tls
    assert "pa55word" not in repr(settings) and "pa55word" not in repr(access)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({**SCRAM, "KAFKA_SASL_MECHANISM": "SCRAM-SHA-1"}, "KAFKA_SASL_MECHANISM"),
        ({**SCRAM, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
        ({**SCRAM, "KAFKA_SASL_USERNAME": ""}, "KAFKA_SASL_USERNAME"),
        ({**SCRAM, "KAFKA_SASL_PASSWORD": ""}, "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "meter"}, "KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE"),
    ],
)
def test_a_bad_kafka_setting_stops_the_process_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.field == variable
    assert str(info.value).startswith(variable)


def test_mutual_tls_needs_both_certificate_and_key(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError) as info:
        load_settings({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": str(cert)})
    assert info.value.field == "KAFKA_SSL_KEYFILE"


def test_tls_files_with_a_protocol_without_tls_are_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigError) as info:
        load_settings({**SCRAM, "KAFKA_SSL_CAFILE": str(ca)})
    assert info.value.field == "KAFKA_SSL_CAFILE"


def test_every_documented_protocol_and_mechanism_is_accepted() -> None:
    for protocol in ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"):
        for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"):
            env = {**SCRAM, "KAFKA_SECURITY_PROTOCOL": protocol, "KAFKA_SASL_MECHANISM": mechanism}
            assert load_settings(env).kafka.security_protocol == protocol
