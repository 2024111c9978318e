"""How the local broker is secured: PLAINTEXT, or SASL/SCRAM, over TLS too.

With ``KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT`` (or ``SASL_SSL``) and a SCRAM mechanism the client
listener asks for SASL/SCRAM: the user of ``KAFKA_SASL_USERNAME`` / ``KAFKA_SASL_PASSWORD`` is
written into the metadata when the storage is formatted (``kafka-storage format --add-scram``) and
is the only super user of the StandardAuthorizer, so anyone else needs ACLs
(docs/kafka-security.md). The controller listener stays PLAINTEXT on loopback (KRaft controllers
cannot check SCRAM: its credentials live in the metadata they serve).

With ``SASL_SSL`` the listener speaks TLS with a certificate for 127.0.0.1 and localhost, signed by a
CA of the stack's own made with openssl (``$STRIPEMETER_STATE_DIR/kafka/tls/ca.pem``); the broker
takes the PEM files as they are, no keystore.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
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
            f'username="{_plain(self.name)}" password="{_plain(self.password)}";'
        )

    def storage_argument(self) -> str:
        """``--add-scram`` argument of ``kafka-storage format``."""
        return f"{self.mechanism}=[name={_plain(self.name)},password={_plain(self.password)}]"


FORBIDDEN = ('"', ",", "[", "]", "=", "\\", ";", " ", "\t", "\n")


def _plain(value: str) -> str:
    """A name or password as the storage tool's ``[name=...,password=...]`` list and a JAAS line in
    server.properties both take it unescaped: without the characters either would read as syntax."""
    if not value or any(c in value for c in FORBIDDEN):
        raise KafkaSetupError(
            "the local broker's SCRAM user and password must be non-empty, without any of "
            f"{' '.join(FORBIDDEN[:7])} or white space (see KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD)"
        )
    return value


LOCAL_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL")


def scram_user(settings: Settings) -> ScramUser | None:
    """The local broker's SCRAM user, when the clients are configured for SASL with SCRAM."""
    protocol, mechanism = settings.kafka_security_protocol, settings.kafka_sasl_mechanism
    if protocol not in ("SASL_PLAINTEXT", "SASL_SSL") or not mechanism.startswith("SCRAM-"):
        return None
    return ScramUser(mechanism, settings.kafka_sasl_username, settings.kafka_sasl_password.value)


def check_runnable(settings: Settings) -> None:
    """The local broker runs PLAINTEXT, or SASL_PLAINTEXT / SASL_SSL with SCRAM: the clients' settings
    must match one before the stack starts it (a remote broker may run anything the clients support)."""
    protocol, mechanism = settings.kafka_security_protocol, settings.kafka_sasl_mechanism
    if protocol != "PLAINTEXT" and scram_user(settings) is None:
        raise KafkaSetupError(
            f"the local broker runs PLAINTEXT, or SASL_PLAINTEXT or SASL_SSL with SCRAM, not {protocol} "
            f"with {mechanism}; see KAFKA_SECURITY_PROTOCOL and KAFKA_SASL_MECHANISM"
        )


def scram_properties(listener: str, scram: ScramUser) -> list[str]:
    """SASL/SCRAM on the client listener, and ACLs on: only the SCRAM user (and the controller
    listener's loopback principal, which the broker's own registration arrives as) is a super user."""
    return [
        f"sasl.enabled.mechanisms={scram.mechanism}",
        f"sasl.mechanism.inter.broker.protocol={scram.mechanism}",
        f"listener.name.{listener.lower()}.{scram.mechanism.lower()}.sasl.jaas.config={scram.jaas()}",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        f"super.users=User:{scram.name};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found=false",
    ]


@dataclass(frozen=True)
class BrokerTls:
    """The stack's own CA and the broker's certificate for 127.0.0.1 and localhost, as PEM files."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "broker.pem"

    @property
    def key(self) -> Path:
        return self.directory / "broker-key.pem"

    def ensure(self) -> None:
        """Make the CA and the broker's certificate once (ten years; the key never leaves the stack)."""
        if self.ca.exists() and self.cert.exists() and self.key.exists():
            return
        openssl = shutil.which("openssl")
        if openssl is None:
            raise KafkaSetupError("openssl is needed for the local broker's TLS (KAFKA_SECURITY_PROTOCOL)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        folder = self.directory
        ca_key, csr, ext = folder / "ca-key.pem", folder / "broker.csr", folder / "san"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        new_key = ["-newkey", "rsa:2048", "-nodes"]
        ca = [openssl, "req", "-x509", *new_key, "-days", "3650", "-subj", "/CN=stripemeter local CA"]
        request = [openssl, "req", *new_key, "-subj", "/CN=localhost"]
        sign = [openssl, "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(ca_key)]
        for command in (
            [*ca, "-keyout", str(ca_key), "-out", str(self.ca)],
            [*request, "-keyout", str(self.key), "-out", str(csr)],
            [*sign, "-CAcreateserial", "-days", "3650", "-extfile", str(ext), "-out", str(self.cert)],
        ):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise KafkaSetupError(
                    f"openssl could not make the local broker's certificate:\n{result.stderr}"
                )


def tls_properties(tls: BrokerTls) -> list[str]:
    """TLS on the client listener from the PEM files: the key and chain inline (the file is mode 600),
    the stack's CA as the truststore (the broker's own inter-broker client checks the name too)."""

    def inline(path: Path) -> str:
        return path.read_text().strip().replace("\n", "\\n")

    return [
        "ssl.keystore.type=PEM",
        f"ssl.keystore.certificate.chain={inline(tls.cert)}",
        f"ssl.keystore.key={inline(tls.key)}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={tls.ca}",
    ]
