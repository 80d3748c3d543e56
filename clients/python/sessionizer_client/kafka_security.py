"""Kafka SASL/TLS for the client's Kafka transport: the worker's settings, the worker's rules.

The same ``SESSIONIZER_KAFKA_*`` variables that secure the worker and the gateway
(``pipeline.security``) secure a publishing service, checked the same way:

=========================================  ==========================================
``SESSIONIZER_KAFKA_SECURITY_PROTOCOL``    PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL
``SESSIONIZER_KAFKA_SASL_MECHANISM``       PLAIN (default), SCRAM-SHA-256, SCRAM-SHA-512
``SESSIONIZER_KAFKA_SASL_USERNAME``        SASL user name
``SESSIONIZER_KAFKA_SASL_PASSWORD``        SASL password
``SESSIONIZER_KAFKA_SSL_CAFILE``           CA bundle (PEM) to verify the brokers; empty = system CAs
``SESSIONIZER_KAFKA_SSL_CERTFILE``         client certificate (PEM), for mutual TLS
``SESSIONIZER_KAFKA_SSL_KEYFILE``          client private key (PEM), for mutual TLS
=========================================  ==========================================

A combination that cannot work raises :class:`ClientError` naming the variable,
before anything connects.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sessionizer_client.exceptions import ClientError

KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PREFIX = "SESSIONIZER_KAFKA_"


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """The connection security of the Kafka transport; :meth:`options` checks it."""

    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaSecurity:
        """Read the ``SESSIONIZER_KAFKA_*`` variables the worker reads."""
        env = os.environ if environ is None else environ
        return cls(
            **{
                name: env.get(PREFIX + name.upper(), default)
                for name, default in (
                    ("security_protocol", "PLAINTEXT"),
                    ("sasl_mechanism", "PLAIN"),
                    ("sasl_username", ""),
                    ("sasl_password", ""),
                    ("ssl_cafile", ""),
                    ("ssl_certfile", ""),
                    ("ssl_keyfile", ""),
                )
            }
        )

    def options(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's ``KafkaProducer`` ({} for PLAINTEXT)."""
        protocol = self.security_protocol.strip().upper()
        mechanism = self.sasl_mechanism.strip().upper()
        if protocol not in KAFKA_PROTOCOLS:
            raise ClientError(
                f"{PREFIX}SECURITY_PROTOCOL={protocol!r}: expected one of {', '.join(KAFKA_PROTOCOLS)}"
            )
        if mechanism not in SASL_MECHANISMS:
            raise ClientError(
                f"{PREFIX}SASL_MECHANISM={mechanism!r}: expected one of {', '.join(SASL_MECHANISMS)}"
            )
        uses_ssl = protocol in ("SSL", "SASL_SSL")
        uses_sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        username, password = self.sasl_username.strip(), self.sasl_password
        files = {
            f"{PREFIX}SSL_CAFILE": self.ssl_cafile.strip(),
            f"{PREFIX}SSL_CERTFILE": self.ssl_certfile.strip(),
            f"{PREFIX}SSL_KEYFILE": self.ssl_keyfile.strip(),
        }
        if not uses_ssl:
            for variable, value in files.items():
                if value:
                    raise ClientError(
                        f"{variable} is set but {PREFIX}SECURITY_PROTOCOL is {protocol}; "
                        "set the protocol to SSL or SASL_SSL, or unset the file"
                    )
        if not uses_sasl and (username or password):
            raise ClientError(
                f"{PREFIX}SASL_USERNAME / _PASSWORD are set but {PREFIX}SECURITY_PROTOCOL is "
                f"{protocol}; set it to SASL_SSL (or SASL_PLAINTEXT), or unset them"
            )
        if uses_sasl and (not username or not password):
            missing = f"{PREFIX}SASL_USERNAME" if not username else f"{PREFIX}SASL_PASSWORD"
            raise ClientError(f"{PREFIX}SECURITY_PROTOCOL={protocol} needs {missing}")
        if protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": protocol}
        if uses_ssl:
            options["ssl_context"] = kafka_ssl_context(*files.values())
        if uses_sasl:
            options.update(
                sasl_mechanism=mechanism, sasl_plain_username=username, sasl_plain_password=password
            )
        return options


def kafka_ssl_context(cafile: str, certfile: str, keyfile: str) -> ssl.SSLContext:
    """Verifies the brokers (the CA file, else the system CAs); presents a client
    certificate when one is given (mutual TLS)."""
    if keyfile and not certfile:
        raise ClientError(
            f"{PREFIX}SSL_KEYFILE is set without {PREFIX}SSL_CERTFILE; "
            "a client key needs its certificate"
        )
    for variable, path in (("CAFILE", cafile), ("CERTFILE", certfile), ("KEYFILE", keyfile)):
        if path and not os.path.isfile(path):
            raise ClientError(
                f"{PREFIX}SSL_{variable}={path!r}: no such file; give the path of a PEM file"
            )
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile or None)
    except ssl.SSLError as exc:
        raise ClientError(f"{PREFIX}SSL_CAFILE={cafile!r}: not a PEM CA bundle ({exc})") from None
    if certfile:
        try:
            context.load_cert_chain(certfile, keyfile or None)
        except (ssl.SSLError, OSError) as exc:
            raise ClientError(
                f"{PREFIX}SSL_CERTFILE / _KEYFILE: cannot load the client certificate and key "
                f"({exc}); give PEM files that belong together"
            ) from None
    return context
