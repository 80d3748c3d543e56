"""``sessionizer gateway``: settings from the environment, Kafka producer, aiohttp server."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from pipeline.config import Settings, load_settings
from pipeline.exceptions import ConfigError
from pipeline.gateway.app import create_app
from pipeline.gateway.publisher import KafkaPublisher
from pipeline.gateway.settings import GatewaySettings, load_gateway_settings
from pipeline.logs import configure_logging
from pipeline.metrics import GatewayMetrics
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
    if not settings.api_key_map:
        raise ConfigError(
            "SESSIONIZER_API_KEYS is empty, so the gateway would refuse every request; "
            "set it to key:project pairs, e.g. SESSIONIZER_API_KEYS=abc1234567:shop"
        )
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
    metrics.install(app)  # GET /metrics, and every request counted
    runner = web.AppRunner(app, access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.gateway_host, settings.gateway_port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.gateway_host}:{settings.gateway_port} "
                f"({exc.strerror}); set SESSIONIZER_GATEWAY_HOST / SESSIONIZER_GATEWAY_PORT"
            ) from None
        for address in runner.addresses:
            log.info(
                "gateway listening on http://%s:%s, publishing to %s at %s",
                *_host_port(address),
                settings.events_topic,
                settings.kafka_bootstrap,
            )
        await _until_stopped()
    finally:
        await runner.cleanup()
        await publisher.stop()
        log.info("gateway stopped")


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
