"""How every Kafka client reaches the brokers: addresses, security protocol, SASL and TLS.

One value built from the settings and handed to every client (worker, API, CLI, tools), so that
none of them connects differently; ``stripemeter/adapters/kafka/client_auth.py`` turns it into
aiokafka keyword arguments, Faust credentials and a properties file for Kafka's own tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from stripemeter.domain.config import Settings

SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
SASL_MECHANISMS: Final = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


@dataclass(frozen=True)
class KafkaAccess:
    bootstrap: str  # host:port[,host:port...]
    security_protocol: str = "PLAINTEXT"  # one of SECURITY_PROTOCOLS
    sasl_mechanism: str = "SCRAM-SHA-512"  # one of SASL_MECHANISMS; used with SASL_* only
    username: str = ""
    password: str = field(default="", repr=False)
    ssl_cafile: str = ""  # PEM bundle of the CAs that signed the brokers' certificates; empty: system CAs
    ssl_certfile: str = ""  # client certificate (mutual TLS), PEM
    ssl_keyfile: str = ""  # its private key, PEM

    @classmethod
    def of(cls, settings: Settings) -> KafkaAccess:
        return cls(
            bootstrap=settings.kafka_bootstrap_servers,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.value,
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
        )

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")
