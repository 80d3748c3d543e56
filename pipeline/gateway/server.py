"""``sessionizer gateway``: settings from the environment, Kafka producer, aiohttp server."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from pipeline.config import Settings, load_settings
from pipeline.credentials import check_secret
from pipeline.exceptions import ConfigError
from pipeline.gateway.app import create_admin_app, create_app
from pipeline.gateway.metrics import GatewayMetrics
from pipeline.gateway.publisher import KafkaPublisher
from pipeline.gateway.settings import GatewaySettings, load_gateway_settings
from pipeline.logs import configure_logging
from pipeline.report.settings import load_report_settings
from pipeline.security import aiokafka_options

log = logging.getLogger(__name__)


def run_gateway(
    settings: Settings | None = None, gateway_settings: GatewaySettings | None = None
) -> None:
    """Serve until SIGINT/SIGTERM. Raises :class:`~pipeline.exceptions.SessionizerError`
    (one line for the CLI) when a setting is wrong or the broker cannot be reached."""
    settings = settings or load_settings()
    gateway_settings = gateway_settings or load_gateway_settings()
    configure_logging(settings)
    if not settings.api_key_map:  # a weak key fails here, in one line
        raise ConfigError(
            "SESSIONIZER_API_KEYS is empty, so the gateway would refuse every request; "
            "set it to key:project pairs, e.g. SESSIONIZER_API_KEYS=<16+ random characters>:shop"
        )
    token = load_report_settings().token.get_secret_value()
    if token:  # checked again when the report is mounted; here before anything connects
        check_secret("SESSIONIZER_REPORT_TOKEN", token, "the token")
    asyncio.run(_serve(settings, gateway_settings))


async def _serve(settings: Settings, gateway_settings: GatewaySettings) -> None:
    publisher = KafkaPublisher(
        settings.kafka_bootstrap,
        settings.events_topic,
        timeout_s=gateway_settings.publish_timeout,
        max_request_size=max(1024 * 1024, gateway_settings.max_body_bytes + 64 * 1024),
        **aiokafka_options(settings),
    )
    await publisher.start()
    metrics = GatewayMetrics()
    app = create_app(
        settings.api_key_map,
        metrics.instrument(publisher),
        settings=gateway_settings,
        max_event_bytes=settings.max_event_bytes,
        ready=publisher.ready,
        on_rejected=metrics.count_rejected,
    )
    admin = create_admin_app(app)
    metrics.install(app, admin)  # every request counted; GET /metrics on the admin port
    runner = web.AppRunner(app, access_log=None)
    admin_runner = web.AppRunner(admin, access_log=None)
    try:
        await runner.setup()
        await admin_runner.setup()
        await _listen(runner, settings.gateway_host, settings.gateway_port, "")
        await _listen(admin_runner, settings.gateway_admin_host, settings.gateway_admin_port, "ADMIN_")
        for address in runner.addresses:
            log.info(
                "gateway listening on http://%s:%s, publishing to %s at %s",
                *_host_port(address),
                settings.events_topic,
                settings.kafka_bootstrap,
            )
        for address in admin_runner.addresses:
            log.info("gateway admin (/metrics, /healthz, /readyz) on http://%s:%s", *_host_port(address))
        await _until_stopped()
    finally:
        await admin_runner.cleanup()
        await runner.cleanup()
        await publisher.stop()
        log.info("gateway stopped")


async def _listen(runner: web.AppRunner, host: str, port: int, which: str) -> None:
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); set "
            f"SESSIONIZER_GATEWAY_{which}HOST / SESSIONIZER_GATEWAY_{which}PORT"
        ) from None


def _host_port(address: object) -> tuple[object, object]:
    if isinstance(address, tuple) and len(address) >= 2:
        return address[0], address[1]
    return address, ""


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
