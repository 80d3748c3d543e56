"""Redis AUTH and TLS against real redis-servers: one that requires a password, one that
speaks TLS (skipped when the redis-server binary was built without TLS).

The store works with the right password (in the URL or in SESSIONIZER_REDIS_PASSWORD);
a wrong or missing password is a one-line RedisUnavailable naming the variable to fix,
from the check every command runs first and from ``sessionizer worker`` itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import Settings
from pipeline.devtools.services import EmbeddedRedis, free_port
from pipeline.exceptions import RedisUnavailable, ServiceStartError
from pipeline.security import check_redis
from pipeline.store.base import Commit
from pipeline.store.connection import redis_client
from pipeline.store.redis import RedisStore

PASSWORD = "s3cret-Pa55word"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server with ``requirepass``."""
    with EmbeddedRedis(password=PASSWORD, appendonly=False) as server:
        yield server


def _address(server: EmbeddedRedis, password: str | None = None) -> str:
    auth = f":{password}@" if password is not None else ""
    return f"redis://{auth}{server.host}:{server.port}/0"


async def _use_store(settings: Settings) -> int:
    """Claim a partition, commit to it and read it back: the store works."""
    client = redis_client(settings)
    store = RedisStore(client, f"auth-test-{uuid.uuid4().hex[:8]}")
    try:
        await check_redis(client, settings)
        claim = await store.claim(0)
        assert await store.commit(0, claim.epoch, Commit({}, {}, {"events": 41}, 1_000))
        again = await store.claim(0)
        assert again.offsets == {"events": 41}
        assert again.epoch == claim.epoch + 1
        return again.epoch
    finally:
        await store.close()


def _refusal(settings: Settings) -> str:
    async def check() -> None:
        client = redis_client(settings)
        try:
            await check_redis(client, settings)
        finally:
            await client.aclose()

    with pytest.raises(RedisUnavailable) as caught:
        asyncio.run(check())
    message = str(caught.value)
    assert "\n" not in message
    assert PASSWORD not in message and "wrong-password" not in message
    return message


def test_the_store_works_with_the_password_in_the_url(locked_redis: EmbeddedRedis) -> None:
    assert asyncio.run(_use_store(Settings(redis_url=_address(locked_redis, PASSWORD)))) == 2


def test_the_store_works_with_the_password_in_its_own_variable(locked_redis: EmbeddedRedis) -> None:
    settings = Settings(redis_url=_address(locked_redis), redis_password=PASSWORD)
    assert asyncio.run(_use_store(settings)) == 2


def test_a_missing_password_names_the_variables(locked_redis: EmbeddedRedis) -> None:
    message = _refusal(Settings(redis_url=_address(locked_redis)))
    assert "requires a password" in message
    assert "SESSIONIZER_REDIS_PASSWORD" in message and "SESSIONIZER_REDIS_URL" in message


def test_a_wrong_password_in_the_url_names_the_url(locked_redis: EmbeddedRedis) -> None:
    message = _refusal(Settings(redis_url=_address(locked_redis, "wrong-password")))
    assert "refused the password" in message and "SESSIONIZER_REDIS_URL" in message


def test_a_wrong_password_variable_names_the_variable(locked_redis: EmbeddedRedis) -> None:
    message = _refusal(Settings(redis_url=_address(locked_redis), redis_password="wrong-password"))
    assert "refused the password" in message and "SESSIONIZER_REDIS_PASSWORD" in message


def test_the_worker_stops_with_one_line_on_a_wrong_password(
    locked_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sessionizer worker`` checks Redis before Kafka: no broker is needed to see it."""
    for name in ("SESSIONIZER_REDIS_PASSWORD", "SESSIONIZER_KAFKA_SECURITY_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SESSIONIZER_REDIS_URL", _address(locked_redis))
    monkeypatch.setenv("SESSIONIZER_REDIS_PASSWORD", "wrong-password")
    monkeypatch.setenv("SESSIONIZER_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sessionizer: error: Redis at redis://127.0.0.1:")
    assert "SESSIONIZER_REDIS_PASSWORD" in lines[0]


# -- TLS -----------------------------------------------------------------------------


def _pki(base: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 / localhost and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def issue(name: str, signer: tuple[Any, Any] | None, san: list[Any] | None = None) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder().subject_name(subject)
            .issuer_name(signer[0].subject if signer else subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=signer is None, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer[1] if signer else key, hashes.SHA256()), key

    ca = issue("sessionizer-test-ca", None)
    server = issue("localhost", ca, [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = issue("sessionizer-client", ca)
    paths: dict[str, str] = {}
    for name, (cert, key) in (("ca", ca), ("server", server), ("client", client)):
        (base / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (base / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        paths[name], paths[f"{name}_key"] = str(base / f"{name}.crt"), str(base / f"{name}.key")
    return paths


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A redis-server with a TLS port that requires client certificates and a password;
    yields its ``rediss://`` address (no password) and the PEM files."""
    pki = _pki(tmp_path_factory.mktemp("redis-tls"))
    tls_port = free_port()
    server = EmbeddedRedis(password=PASSWORD, appendonly=False, extra_args=[
        "--tls-port", str(tls_port), "--tls-cert-file", pki["server"], "--tls-key-file", pki["server_key"],
        "--tls-ca-cert-file", pki["ca"], "--tls-auth-clients", "yes",
    ])
    try:
        server.start()
    except ServiceStartError as exc:
        pytest.skip(f"redis-server without TLS support: {str(exc).splitlines()[0]}")
    try:
        yield f"rediss://127.0.0.1:{tls_port}/0", pki
    finally:
        server.close()


def test_the_store_works_over_tls_with_a_client_certificate(tls_redis: tuple[str, dict[str, str]]) -> None:
    url, pki = tls_redis
    settings = Settings(
        redis_url=url, redis_password=PASSWORD, redis_ssl_ca_certs=pki["ca"],
        redis_ssl_certfile=pki["client"], redis_ssl_keyfile=pki["client_key"],
    )
    assert asyncio.run(_use_store(settings)) == 2


def test_tls_without_the_ca_names_the_tls_variables(tls_redis: tuple[str, dict[str, str]]) -> None:
    url, pki = tls_redis
    message = _refusal(Settings(
        redis_url=url, redis_password=PASSWORD,
        redis_ssl_certfile=pki["client"], redis_ssl_keyfile=pki["client_key"],
    ))
    assert "TLS" in message and "SESSIONIZER_REDIS_SSL_CA_CERTS" in message


def test_sessions_live_reads_the_password_from_its_own_variable(locked_redis: EmbeddedRedis) -> None:
    env = {"SESSIONIZER_REDIS_URL": _address(locked_redis), "SESSIONIZER_REDIS_KEY_PREFIX": "auth-cli"}
    runner = CliRunner()
    ok = runner.invoke(main, ["sessions", "live", "--json"], env={**env, "SESSIONIZER_REDIS_PASSWORD": PASSWORD})
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(main, ["sessions", "live", "--json"], env=env)
    assert refused.exit_code != 0
    assert "SESSIONIZER_REDIS" in refused.output and PASSWORD not in refused.output
