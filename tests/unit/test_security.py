"""Secure connections: the client options built from the settings, and the one-line
errors for combinations that cannot work."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline.config import Settings
from pipeline.exceptions import ConfigError
from pipeline.security import (
    aiokafka_options,
    faust_options,
    kafka_python_options,
    kafka_security,
    redis_address,
    redis_options,
)


def _pem_pair(name: str, issuer: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    signer_cert, signer_key = issuer if issuer is not None else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    return builder.sign(signer_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a client certificate it signed, as PEM files."""
    base = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = _pem_pair("test-ca")
    client_cert, client_key = _pem_pair("client", (ca_cert, ca_key))
    paths = {}
    for name, cert, key in (("ca", ca_cert, ca_key), ("client", client_cert, client_key)):
        (base / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (base / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        paths[name] = str(base / f"{name}.crt")
        paths[f"{name}_key"] = str(base / f"{name}.key")
    (base / "garbage.pem").write_text("not a certificate\n")
    paths["garbage"] = str(base / "garbage.pem")
    return paths


# -- Kafka --------------------------------------------------------------------------


def test_plaintext_adds_no_options() -> None:
    settings = Settings()
    assert aiokafka_options(settings) == {}
    assert kafka_python_options(settings) == {}
    assert faust_options(settings) == {}


def test_sasl_ssl_with_scram(pki: dict[str, str]) -> None:
    settings = Settings(
        kafka_security_protocol="sasl_ssl", kafka_sasl_mechanism="scram-sha-512",
        kafka_sasl_username="worker", kafka_sasl_password="pw", kafka_ssl_cafile=pki["ca"],
    )
    options = aiokafka_options(settings)
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "worker", "sasl_plain_password": "pw",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "test-ca"),),)]
    assert kafka_python_options(settings).keys() == aiokafka_options(settings).keys()


def test_sasl_plaintext_has_no_tls() -> None:
    options = aiokafka_options(Settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p",
    ))
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == "PLAIN"
    assert "ssl_context" not in options


def test_ssl_with_a_client_certificate(pki: dict[str, str]) -> None:
    settings = Settings(
        kafka_security_protocol="SSL", kafka_ssl_cafile=pki["ca"],
        kafka_ssl_certfile=pki["client"], kafka_ssl_keyfile=pki["client_key"],
    )
    options = aiokafka_options(settings)
    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert "sasl_mechanism" not in options


def test_ssl_without_a_cafile_uses_the_system_cas() -> None:
    security = kafka_security(Settings(kafka_security_protocol="SSL"))
    assert security.ssl_context is not None
    assert security.ssl_context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "SESSIONIZER_KAFKA_SASL_USERNAME"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"}, "SESSIONIZER_KAFKA_SASL_PASSWORD"),
        ({"kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "SESSIONIZER_KAFKA_SASL_USERNAME"),
        ({"kafka_ssl_cafile": "/etc/hosts"}, "SESSIONIZER_KAFKA_SSL_CAFILE"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/no/such/ca.pem"}, "SESSIONIZER_KAFKA_SSL_CAFILE"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/etc/hosts"}, "SESSIONIZER_KAFKA_SSL_KEYFILE"),
    ],
)
def test_kafka_combinations_that_cannot_work_name_the_variable(overrides: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        aiokafka_options(Settings(**overrides))  # type: ignore[arg-type]
    message = str(caught.value)
    assert variable in message
    assert "\n" not in message


def test_a_file_that_is_not_pem_is_named(pki: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="SESSIONIZER_KAFKA_SSL_CAFILE"):
        aiokafka_options(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki["garbage"]))
    with pytest.raises(ConfigError, match="SESSIONIZER_KAFKA_SSL_CERTFILE"):
        aiokafka_options(Settings(kafka_security_protocol="SSL", kafka_ssl_certfile=pki["garbage"]))


def test_the_password_is_not_in_the_settings_repr() -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u",
                        kafka_sasl_password="hunter2", redis_password="hunter3")
    assert "hunter2" not in repr(settings) and "hunter3" not in repr(settings)


def test_faust_gets_credentials_aiokafka_understands(pki: dict[str, str]) -> None:
    from faust.auth import SASLCredentials, SSLCredentials
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    sasl = faust_options(Settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="u", kafka_sasl_password="p", kafka_ssl_cafile=pki["ca"],
    ))["broker_credentials"]
    assert isinstance(sasl, SASLCredentials)
    auth = credentials_to_aiokafka_auth(sasl)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-256"
    assert auth["sasl_plain_username"] == "u" and auth["sasl_plain_password"] == "p"
    assert isinstance(auth["ssl_context"], ssl.SSLContext)

    plain_sasl = faust_options(Settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p",
    ))["broker_credentials"]
    assert credentials_to_aiokafka_auth(plain_sasl)["security_protocol"] == "SASL_PLAINTEXT"

    tls = faust_options(Settings(kafka_security_protocol="SSL"))["broker_credentials"]
    assert isinstance(tls, SSLCredentials)
    assert credentials_to_aiokafka_auth(tls)["security_protocol"] == "SSL"


def test_the_worker_app_and_sink_take_the_security_settings(pki: dict[str, str]) -> None:
    from pipeline.worker.app import build_app

    settings = Settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password="p",
        kafka_ssl_cafile=pki["ca"], redis_password="rpw", web_port=1,
    )
    app = build_app(settings)
    assert app.conf.broker_credentials is not None
    runtime = app.sessionizer  # type: ignore[attr-defined]
    assert runtime.sink.client["security_protocol"] == "SASL_SSL"
    assert runtime.store.client.connection_pool.connection_kwargs["password"] == "rpw"


def test_tail_and_produce_take_the_kafka_security_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.cli import produce, tail

    made: list[tuple[str, dict[str, Any]]] = []

    def fake(kind: str) -> Any:
        class Client:
            DEFAULT_CONFIG: dict[str, Any] = {}

            def __init__(self, *args: Any, **config: Any) -> None:
                made.append((kind, config))

            def list_topics(self) -> list[str]:
                return ["t"]

            def close(self) -> None:
                pass

        return Client

    monkeypatch.setattr(tail, "KafkaConsumer", fake("consumer"))
    monkeypatch.setattr(produce, "KafkaProducer", fake("producer"))
    monkeypatch.setattr(produce, "KafkaAdminClient", fake("admin"))
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="u", kafka_sasl_password="p",
    )
    security = kafka_python_options(settings)
    tail._consumer(settings, from_beginning=False)
    produce._producer(settings.kafka_bootstrap, security)
    produce.ensure_topic(settings.kafka_bootstrap, "t", 1, 1, security)
    assert [kind for kind, _ in made] == ["consumer", "producer", "admin"]
    for _, config in made:
        assert config["security_protocol"] == "SASL_PLAINTEXT"
        assert config["sasl_mechanism"] == "SCRAM-SHA-256"
        assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("u", "p")


# -- Redis --------------------------------------------------------------------------


def test_redis_password_from_its_own_variable() -> None:
    assert redis_options(Settings()) == {}
    assert redis_options(Settings(redis_password="pw")) == {"password": "pw"}


def test_redis_password_set_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="SESSIONIZER_REDIS_PASSWORD"):
        redis_options(Settings(redis_url="redis://:a@localhost:6379/0", redis_password="b"))


def test_rediss_with_files_and_verification(pki: dict[str, str]) -> None:
    options = redis_options(Settings(
        redis_url="rediss://redis.example:6380/0", redis_ssl_ca_certs=pki["ca"],
        redis_ssl_certfile=pki["client"], redis_ssl_keyfile=pki["client_key"],
    ))
    assert options == {
        "ssl_ca_certs": pki["ca"], "ssl_certfile": pki["client"], "ssl_keyfile": pki["client_key"],
        "ssl_cert_reqs": "required", "ssl_check_hostname": True,
    }
    relaxed = redis_options(Settings(redis_url="rediss://r:6380/0", redis_ssl_cert_reqs="NONE"))
    assert relaxed == {"ssl_cert_reqs": "none", "ssl_check_hostname": False}


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"redis_ssl_ca_certs": "/etc/hosts"}, "SESSIONIZER_REDIS_SSL_CA_CERTS"),
        ({"redis_url": "rediss://r:6380/0", "redis_ssl_ca_certs": "/no/such.pem"}, "SESSIONIZER_REDIS_SSL_CA_CERTS"),
        ({"redis_url": "rediss://r:6380/0", "redis_ssl_keyfile": "/etc/hosts"}, "SESSIONIZER_REDIS_SSL_KEYFILE"),
    ],
)
def test_redis_combinations_that_cannot_work_name_the_variable(overrides: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        redis_options(Settings(**overrides))  # type: ignore[arg-type]


def test_addresses_in_messages_leave_the_password_out() -> None:
    url = "redis://:s3cret@cache.internal:6380/2"
    assert redis_address(url) == "redis://cache.internal:6380/2"
    assert redis_address("rediss://localhost") == "rediss://localhost:6379"


def test_the_configuration_reference_lists_every_security_variable() -> None:
    reference = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        if name.startswith(("kafka_s", "redis_ssl", "redis_password", "log_format", "metrics_")):
            assert f"SESSIONIZER_{name.upper()}" in reference, name


def test_sasl_plain_over_plaintext_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="pipeline.security"):
        kafka_security(Settings(
            kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p",
        ))
    assert any("clear text" in r.getMessage() and "SASL_SSL" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline.security"):
        kafka_security(Settings(
            kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="u", kafka_sasl_password="p",
        ))
    assert not caplog.records


def test_redis_hostname_checking_is_explicit() -> None:
    assert redis_options(Settings(redis_url="rediss://r:6380/0"))["ssl_check_hostname"] is True
    relaxed = redis_options(Settings(redis_url="rediss://r:6380/0", redis_ssl_check_hostname=False))
    assert relaxed["ssl_check_hostname"] is False and relaxed["ssl_cert_reqs"] == "required"


def test_every_redis_client_gets_timeouts_and_a_bounded_pool() -> None:
    from pipeline.store.connection import redis_client, redis_client_sync

    settings = Settings(
        redis_url="redis://127.0.0.1:1/0", redis_password="pw", redis_socket_timeout=3,
        redis_connect_timeout=2, redis_max_connections=7,
    )
    for client in (redis_client(settings), redis_client_sync(settings)):
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (3, 2)
        assert kwargs["password"] == "pw"
        assert pool.max_connections == 7
        assert type(pool).__name__ == "BlockingConnectionPool"


def test_a_cluster_client_gets_the_security_settings_timeouts_and_a_bound_per_node() -> None:
    """SESSIONIZER_REDIS_CLUSTER=true: nothing is asked of the server (the asyncio
    cluster client connects on its first command), and every node's connections get
    the password, the timeouts and the cap of the single-node pool."""
    import asyncio

    from pipeline.store.connection import is_cluster, redis_client

    settings = Settings(
        redis_url="redis://127.0.0.1:1/0", redis_password="pw", redis_socket_timeout=3,
        redis_connect_timeout=2, redis_max_connections=7, redis_cluster="true",
    )
    client = redis_client(settings)
    assert is_cluster(client)
    kwargs = client.connection_kwargs  # type: ignore[attr-defined]
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (3, 2)
    assert kwargs["password"] == "pw"
    assert kwargs["max_connections"] == 7
    asyncio.run(client.aclose())
