"""How MC's Kafka clients authenticate and encrypt: TLS (CA, client certificate, hostname
check) and SASL (PLAIN, SCRAM-SHA-256/512), as managed Kafka services require.

`KafkaSecurity` is what settings produce (`ServiceSettings.kafka_security()`), and
`client_options()` the keyword arguments every aiokafka producer and consumer MC creates gets.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True)
class KafkaSecurity:
    """Transport security and authentication of a Kafka client.

    Raises (at construction) `ValueError` for combinations that cannot work: TLS files with a
    plaintext protocol, SASL without a mechanism or credentials, a certificate without its key.
    """

    protocol: Protocol = "PLAINTEXT"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True
    sasl_mechanism: Mechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None

    def __post_init__(self) -> None:
        tls = self.protocol in ("SSL", "SASL_SSL")
        sasl = self.protocol.startswith("SASL_")
        if not tls and (self.ca_file or self.cert_file or self.key_file):
            raise ValueError(f"TLS files are set but the Kafka protocol is {self.protocol}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a Kafka client certificate needs its key (and the key its cert)")
        if sasl and (not self.sasl_mechanism or not self.sasl_username or not self.sasl_password):
            raise ValueError(f"{self.protocol} needs a SASL mechanism, username and password")
        if not sasl and self.sasl_mechanism:
            raise ValueError(f"a SASL mechanism is set but the Kafka protocol is {self.protocol}")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (verifying the broker against `ca_file`, or the system CAs),
        or None for plaintext protocols."""
        if self.protocol not in ("SSL", "SASL_SSL"):
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        context.check_hostname = self.check_hostname
        if self.cert_file and self.key_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments (producer and consumer alike)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options
