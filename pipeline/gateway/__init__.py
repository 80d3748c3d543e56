"""The HTTP gateway: Exceptionless clients and SPEC producers in, the events topic out.

- :func:`create_app` - the aiohttp application, around any publish function.
- :func:`run_gateway` - ``sessionizer gateway``: settings from the environment.

Modules: :mod:`.app` (endpoints and refusals), :mod:`.mapping` (request
bodies to SPEC events, pure), :mod:`.ids` (how a heartbeat's id is read),
:mod:`.publisher` (Kafka), :mod:`.settings` (limits); who may call it is
:mod:`pipeline.access` (with :mod:`pipeline.ratelimit`).
"""

from pipeline.gateway.app import create_app
from pipeline.gateway.server import run_gateway

__all__ = ["create_app", "run_gateway"]
