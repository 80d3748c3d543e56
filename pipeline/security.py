"""Secure connections: Kafka SASL/SSL and Redis AUTH/TLS options, built from the settings.

Every Kafka client of the worker and the gateway (the faust app, the sink producer,
the gateway's publisher, the kafka-python admin of the preflight and of
``sessionizer status``) and every Redis client takes its options from here, so one
set of ``SESSIONIZER_*`` variables secures them all:

=====================================  ==============================================
Kafka                                  ``SESSIONIZER_KAFKA_SECURITY_PROTOCOL``
                                       (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL),
                                       ``_SASL_MECHANISM`` (PLAIN, SCRAM-SHA-256,
                                       SCRAM-SHA-512), ``_SASL_USERNAME``,
                                       ``_SASL_PASSWORD``, ``_SSL_CAFILE``,
                                       ``_SSL_CERTFILE``, ``_SSL_KEYFILE``
Redis                                  the password in ``SESSIONIZER_REDIS_URL``
                                       (``redis://:pw@host:6379/0``) or
                                       ``SESSIONIZER_REDIS_PASSWORD``; TLS with a
                                       ``rediss://`` URL and ``SESSIONIZER_REDIS_SSL_*``
=====================================  ==============================================

A combination that cannot work (SASL without a user name, a CA file with
PLAINTEXT, TLS files with a ``redis://`` URL, a file that does not exist) raises
:class:`~pipeline.exceptions.ConfigError` naming the variable, before anything
connects. :func:`check_redis` turns Redis's refusals (a wrong or missing password,
a failed TLS handshake) into a one-line :class:`~pipeline.exceptions.RedisUnavailable`
saying which variable to fix.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kafka import errors as kafka_errors

from pipeline.config import Settings
from pipeline.exceptions import BrokerUnavailable, ConfigError, RedisUnavailable
from sessionizer_client.exceptions import ClientError
from sessionizer_client.kafka_security import KafkaSecurity as KafkaSettings

__all__ = [
    "UNREACHABLE_ERRORS",
    "KafkaSecurity",
    "aiokafka_options",
    "broker_unavailable",
    "check_redis",
    "faust_options",
    "kafka_python_options",
    "kafka_security",
    "redis_address",
    "redis_options",
]

log = logging.getLogger(__name__)

PLAIN_OVER_PLAINTEXT = (
    "SESSIONIZER_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT with SASL mechanism PLAIN sends the "
    "Kafka password in clear text over the network; use SASL_SSL (or a SCRAM mechanism)"
)
REDIS_CERT_REQS = ("required", "optional", "none")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """What a Kafka client needs to connect: the protocol, SASL login, TLS context."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def _file(variable: str, path: str) -> str:
    if not os.path.isfile(path):
        raise ConfigError(f"{variable}={path!r}: no such file; give the path of a PEM file")
    return path


def kafka_security(settings: Settings) -> KafkaSecurity:
    """The Kafka security settings, checked (raises :class:`ConfigError`) by the same
    rules as the light client's :class:`sessionizer_client.KafkaSecurity`."""
    try:
        options = KafkaSettings(
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=settings.kafka_sasl_password.get_secret_value(),
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
        ).options()
    except ClientError as exc:
        raise ConfigError(str(exc)) from None
    security = KafkaSecurity(
        protocol=options.get("security_protocol", "PLAINTEXT"),
        mechanism=options.get("sasl_mechanism"),
        username=options.get("sasl_plain_username"),
        password=options.get("sasl_plain_password"),
        ssl_context=options.get("ssl_context"),
    )
    if security.protocol == "SASL_PLAINTEXT" and security.mechanism == "PLAIN":
        log.warning("%s", PLAIN_OVER_PLAINTEXT)
    return security


def aiokafka_options(settings: Settings | KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer`` / ``AIOKafkaConsumer`` ({} for PLAINTEXT)."""
    security = settings if isinstance(settings, KafkaSecurity) else kafka_security(settings)
    if security.protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.ssl_context is not None:
        options["ssl_context"] = security.ssl_context
    if security.uses_sasl:
        options.update(
            sasl_mechanism=security.mechanism,
            sasl_plain_username=security.username,
            sasl_plain_password=security.password,
        )
    return options


def kafka_python_options(settings: Settings | KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for kafka-python's ``KafkaAdminClient`` / ``KafkaConsumer`` /
    ``KafkaProducer`` ({} for PLAINTEXT). The names are aiokafka's too."""
    return aiokafka_options(settings)


def faust_options(settings: Settings | KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for ``faust.App``: ``broker_credentials`` ({} for PLAINTEXT)."""
    security = settings if isinstance(settings, KafkaSecurity) else kafka_security(settings)
    if security.protocol == "PLAINTEXT":
        return {}
    from faust.auth import SASLCredentials, SSLCredentials

    if security.uses_sasl:
        return {
            "broker_credentials": SASLCredentials(
                username=security.username,
                password=security.password,
                ssl_context=security.ssl_context,
                mechanism=security.mechanism,
            )
        }
    assert security.ssl_context is not None
    return {"broker_credentials": SSLCredentials(security.ssl_context)}


# -- Redis ---------------------------------------------------------------------------


def redis_address(url: str) -> str:
    """``host:port/db`` of a Redis URL, without the password (for messages)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    path = parts.path.strip("/")
    return f"{parts.scheme}://{host}:{port}" + (f"/{path}" if path else "")


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``redis.asyncio.Redis.from_url(settings.redis_url, ...)``:
    the AUTH password from ``SESSIONIZER_REDIS_PASSWORD`` and, for ``rediss://``, the
    TLS files and verification mode. Raises :class:`ConfigError` for a mix that
    cannot work."""
    url = settings.redis_url
    parts = urlsplit(url)
    options: dict[str, Any] = {}
    password = settings.redis_password.get_secret_value()
    if password:
        if parts.password:
            raise ConfigError(
                "the Redis password is set twice, in SESSIONIZER_REDIS_URL and in "
                "SESSIONIZER_REDIS_PASSWORD; keep one"
            )
        options["password"] = password
    files = {
        "SESSIONIZER_REDIS_SSL_CA_CERTS": ("ssl_ca_certs", settings.redis_ssl_ca_certs.strip()),
        "SESSIONIZER_REDIS_SSL_CERTFILE": ("ssl_certfile", settings.redis_ssl_certfile.strip()),
        "SESSIONIZER_REDIS_SSL_KEYFILE": ("ssl_keyfile", settings.redis_ssl_keyfile.strip()),
    }
    cert_reqs = settings.redis_ssl_cert_reqs.strip().lower()
    if cert_reqs not in REDIS_CERT_REQS:
        raise ConfigError(
            f"SESSIONIZER_REDIS_SSL_CERT_REQS={cert_reqs!r}: expected one of {', '.join(REDIS_CERT_REQS)}"
        )
    if parts.scheme != "rediss":
        for variable, (_, value) in files.items():
            if value:
                raise ConfigError(
                    f"{variable} is set but SESSIONIZER_REDIS_URL is not a rediss:// URL; "
                    "use rediss://host:port/0 for TLS, or unset it"
                )
        return options
    if files["SESSIONIZER_REDIS_SSL_KEYFILE"][1] and not files["SESSIONIZER_REDIS_SSL_CERTFILE"][1]:
        raise ConfigError(
            "SESSIONIZER_REDIS_SSL_KEYFILE is set without SESSIONIZER_REDIS_SSL_CERTFILE; "
            "a client key needs its certificate"
        )
    for variable, (name, value) in files.items():
        if value:
            options[name] = _file(variable, value)
    options["ssl_cert_reqs"] = cert_reqs
    # explicit, whatever redis-py's default: the certificate must name the host
    options["ssl_check_hostname"] = cert_reqs != "none" and settings.redis_ssl_check_hostname
    return options


def _redis_password_source(url: str) -> str:
    return (
        "the password in SESSIONIZER_REDIS_URL"
        if urlsplit(url).password
        else "SESSIONIZER_REDIS_PASSWORD (or the URL: redis://:PASSWORD@host:6379/0)"
    )


async def check_redis(client: Any, settings: Settings) -> None:
    """PING, raising a one-line :class:`RedisUnavailable` that names what to fix:
    the password variables when Redis refuses the login, the TLS variables when the
    handshake fails, the URL when nothing answers."""
    from redis.exceptions import AuthenticationError, ResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    url = settings.redis_url
    where = redis_address(url)
    has_password = bool(urlsplit(url).password or settings.redis_password.get_secret_value())
    try:
        await client.ping()
    except AuthenticationError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if has_password:
            raise RedisUnavailable(
                f"Redis at {where} refused the password ({reason}); check "
                f"{_redis_password_source(url)}"
            ) from None
        raise RedisUnavailable(
            f"Redis at {where} requires a password ({reason}); set SESSIONIZER_REDIS_PASSWORD "
            "or put it in SESSIONIZER_REDIS_URL (redis://:PASSWORD@host:6379/0)"
        ) from None
    except ResponseError as exc:
        if "AUTH" in str(exc).upper():
            raise RedisUnavailable(
                f"Redis at {where} has no password set but one was given ({exc}); unset "
                f"{_redis_password_source(url)}"
            ) from None
        raise RedisUnavailable(f"Redis at {where} refused PING ({exc})") from None
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if _is_tls_failure(exc):
            raise RedisUnavailable(
                f"TLS with Redis at {where} failed ({text}); check the rediss:// URL and "
                "SESSIONIZER_REDIS_SSL_CA_CERTS / _CERTFILE / _KEYFILE / _CERT_REQS"
            ) from None
        raise RedisUnavailable(
            f"cannot reach Redis at {where} ({text}); check SESSIONIZER_REDIS_URL and that "
            "Redis is running"
        ) from None


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        text = str(seen).lower()
        if "ssl" in text or "certificate" in text or "tls" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# -- kafka-python: a broker nobody answers at ----------------------------------------

#: What kafka-python raises when no broker answers at the bootstrap address:
#: ``NoBrokersAvailable`` up to 2.x, ``KafkaTimeoutError`` ("Unable to bootstrap") since 3.0.
UNREACHABLE_ERRORS: tuple[type[Exception], ...] = tuple(
    error
    for error in (
        getattr(kafka_errors, "NoBrokersAvailable", None),
        kafka_errors.KafkaTimeoutError,
        kafka_errors.KafkaConnectionError,
    )
    if error is not None
)


def broker_unavailable(bootstrap: str, detail: str = "") -> BrokerUnavailable:
    """The one-line error for a broker we cannot reach."""
    why = f" ({detail})" if detail else ""
    return BrokerUnavailable(
        f"cannot reach the Kafka broker at {bootstrap}{why}; start it, or set "
        "SESSIONIZER_KAFKA_BOOTSTRAP to the address of a running one"
    )
