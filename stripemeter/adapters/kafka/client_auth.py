"""Kafka client settings from one ``KafkaAccess``: every client of the project connects alike.

aiokafka clients take ``client_kwargs(access)``; the Faust app takes ``faust_credentials(access)``;
Kafka's own Java tools take ``tool_properties(access)`` as their ``--command-config`` file.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path
from typing import Any

import faust
from aiokafka.helpers import create_ssl_context
from faust.types.auth import CredentialsT

from stripemeter.domain.kafka_access import KafkaAccess


@functools.lru_cache(maxsize=8)
def ssl_context(access: KafkaAccess) -> ssl.SSLContext | None:
    """The TLS context of an SSL or SASL_SSL connection (brokers' names are checked), else None."""
    if not access.tls:
        return None
    context: ssl.SSLContext = create_ssl_context(
        cafile=access.ssl_cafile or None,
        certfile=access.ssl_certfile or None,
        keyfile=access.ssl_keyfile or None,
    )
    return context


def auth_kwargs(access: KafkaAccess) -> dict[str, Any]:
    """aiokafka's security keyword arguments (producer, consumer and admin client take the same)."""
    kwargs: dict[str, Any] = {"security_protocol": access.security_protocol}
    if access.tls:
        kwargs["ssl_context"] = ssl_context(access)
    if access.sasl:
        kwargs["sasl_mechanism"] = access.sasl_mechanism
        kwargs["sasl_plain_username"] = access.username
        kwargs["sasl_plain_password"] = access.password
    return kwargs


def client_kwargs(access: KafkaAccess) -> dict[str, Any]:
    """``bootstrap_servers`` and the security keyword arguments of an aiokafka client."""
    return {"bootstrap_servers": access.bootstrap, **auth_kwargs(access)}


def faust_broker(access: KafkaAccess) -> str:
    return ",".join(f"kafka://{server.strip()}" for server in access.bootstrap.split(","))


def faust_credentials(access: KafkaAccess) -> CredentialsT | None:
    """Faust's ``broker_credentials``: SASL (over TLS for SASL_SSL), TLS alone, or None (PLAINTEXT)."""
    if access.sasl:
        return faust.SASLCredentials(
            username=access.username,
            password=access.password,
            mechanism=access.sasl_mechanism,
            ssl_context=ssl_context(access),
        )
    context = ssl_context(access)
    return faust.SSLCredentials(context) if context is not None else None


def _jaas(access: KafkaAccess) -> str:
    module = (
        "org.apache.kafka.common.security.plain.PlainLoginModule"
        if access.sasl_mechanism == "PLAIN"
        else "org.apache.kafka.common.security.scram.ScramLoginModule"
    )

    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return f"{module} required username={quoted(access.username)} password={quoted(access.password)};"


def _property(name: str, value: str) -> str:
    """One line of a Java properties file, its value escaped (backslashes, line breaks)."""
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return f"{name}={escaped}"


def tool_properties(access: KafkaAccess) -> str:
    """A Java client properties file with the same security settings. PEM files serve as they are (no
    keystore needed); a client certificate and key are read into it, as Kafka takes them inline."""
    lines = [_property("security.protocol", access.security_protocol)]
    if access.sasl:
        lines.append(_property("sasl.mechanism", access.sasl_mechanism))
        lines.append(_property("sasl.jaas.config", _jaas(access)))
    if access.tls:
        if access.ssl_cafile:
            lines.append(_property("ssl.truststore.type", "PEM"))
            lines.append(_property("ssl.truststore.location", access.ssl_cafile))
        if access.ssl_certfile and access.ssl_keyfile:
            lines.append(_property("ssl.keystore.type", "PEM"))
            chain = Path(access.ssl_certfile).read_text()
            lines.append(_property("ssl.keystore.certificate.chain", chain))
            lines.append(_property("ssl.keystore.key", Path(access.ssl_keyfile).read_text()))
    return "\n".join(lines) + "\n"


def write_tool_properties(access: KafkaAccess, directory: Path) -> Path | None:
    """``tool_properties`` in ``directory`` with mode 600 (it may hold a password); None for PLAINTEXT."""
    if access.security_protocol == "PLAINTEXT":
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "client.properties"
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(tool_properties(access))
    return path
