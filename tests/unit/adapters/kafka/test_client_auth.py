"""Every Kafka client gets the same security settings: aiokafka, Faust and Kafka's Java tools."""

from __future__ import annotations

import re
import ssl
import subprocess
from pathlib import Path

import faust
import pytest

from stripemeter.adapters.kafka.client_auth import (
    client_kwargs,
    faust_broker,
    faust_credentials,
    ssl_context,
    tool_properties,
    write_tool_properties,
)
from stripemeter.adapters.kafka.inspect.kafka_tools import tool_args
from stripemeter.domain.kafka_access import KafkaAccess

SCRAM = KafkaAccess("k1:9093,k2:9093", "SASL_PLAINTEXT", "SCRAM-SHA-512", "meter", 'pa"ss\\word')


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key (openssl), usable as a CA file too."""
    folder = tmp_path_factory.mktemp("pem")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
            ),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_plaintext_clients_get_only_the_bootstrap_servers() -> None:
    access = KafkaAccess("127.0.0.1:9092")
    assert client_kwargs(access) == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    assert faust_credentials(access) is None
    assert write_tool_properties(access, Path("/nonexistent")) is None


def test_scram_clients_get_mechanism_user_and_password() -> None:
    assert client_kwargs(SCRAM) == {
        "bootstrap_servers": "k1:9093,k2:9093",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "meter",
        "sasl_plain_password": 'pa"ss\\word',
    }


def test_faust_gets_the_same_scram_credentials_and_every_broker() -> None:
    credentials = faust_credentials(SCRAM)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("meter", 'pa"ss\\word')
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.protocol.value == "SASL_PLAINTEXT"
    assert faust_broker(SCRAM) == "kafka://k1:9093,kafka://k2:9093"


def test_sasl_ssl_verifies_the_brokers_with_the_given_ca(pem: tuple[Path, Path]) -> None:
    cert, _key = pem
    access = KafkaAccess("k:9094", "SASL_SSL", "SCRAM-SHA-256", "meter", "pw", ssl_cafile=str(cert))
    kwargs = client_kwargs(access)
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "localhost"),),)]
    credentials = faust_credentials(access)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.ssl_context is context


def test_mutual_tls_loads_the_client_certificate(pem: tuple[Path, Path]) -> None:
    cert, key = pem
    access = KafkaAccess("k:9094", "SSL", ssl_cafile=str(cert), ssl_certfile=str(cert), ssl_keyfile=str(key))
    assert ssl_context(access) is not None
    assert client_kwargs(access)["security_protocol"] == "SSL"
    assert isinstance(faust_credentials(access), faust.SSLCredentials)
    properties = tool_properties(access)
    assert "ssl.keystore.type=PEM" in properties
    assert "ssl.keystore.certificate.chain=-----BEGIN CERTIFICATE-----\\n" in properties
    assert "ssl.keystore.key=-----BEGIN PRIVATE KEY-----\\n" in properties
    assert f"ssl.truststore.location={cert}" in properties


def test_java_tools_get_the_same_login_escaped_and_only_their_owner_reads_it(tmp_path: Path) -> None:
    assert tool_properties(SCRAM).splitlines() == [
        "security.protocol=SASL_PLAINTEXT",
        "sasl.mechanism=SCRAM-SHA-512",
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="meter" password="pa\\\\"ss\\\\\\\\word";',
    ]
    path = write_tool_properties(SCRAM, tmp_path / "client")
    assert path is not None and path.stat().st_mode & 0o777 == 0o600
    plain = KafkaAccess("k:1", "SASL_SSL", "PLAIN", "u", "p")
    assert "org.apache.kafka.common.security.plain.PlainLoginModule" in tool_properties(plain)


def test_kafka_tools_get_the_command_config_unless_given_one() -> None:
    config = Path("/s/client.properties")
    assert tool_args("kafka-topics", ["--list"], "h:1", config)[1] == [
        "--command-config",
        str(config),
        "--bootstrap-server",
        "h:1",
        "--list",
    ]
    given = ["--consumer.config", "mine.properties", "--topic", "t"]
    assert tool_args("kafka-console-consumer", given, "h:1", config)[1] == [
        "--bootstrap-server",
        "h:1",
        *given,
    ]
    topic_config = ["--create", "--topic", "t", "--config", "retention.ms=1"]
    assert "--command-config" in tool_args("kafka-topics", topic_config, "h:1", config)[1]
    assert tool_args("kafka-dump-log", ["--files", "x"], "h:1", config)[1] == ["--files", "x"]


def test_no_kafka_client_is_built_around_client_auth() -> None:
    """Every aiokafka client takes ``client_kwargs`` and the Faust app ``faust_credentials``: a client
    given only ``bootstrap_servers`` would connect in the clear to a secured cluster."""
    root = Path(__file__).resolve().parents[4]
    sources = {
        path: path.read_text()
        for folder in ("stripemeter", "streams", "api")
        for path in (root / folder).rglob("*.py")
        if path.name != "client_auth.py"
    }
    assert len(sources) > 100
    bare = [str(path) for path, text in sources.items() if re.search(r"\bbootstrap_servers\s*=", text)]
    assert bare == []
    apps = [text for text in sources.values() if "faust.App(" in text]
    assert apps and all("broker_credentials=faust_credentials(" in text for text in apps)
