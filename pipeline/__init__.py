"""Sessionization pipeline: raw user events on Kafka become user sessions.

The package root keeps what every layer shares; the rest lives in subpackages
(docs/design.md, "Layout"):

- :mod:`pipeline.exceptions` - the whole exception tree, under :class:`SessionizerError`.
- :mod:`pipeline.config` - settings from ``SESSIONIZER_*`` environment variables.
- :mod:`pipeline.logs` - log output and the Prometheus registry.
- :mod:`pipeline.security` - Kafka and Redis connection security (with
  :mod:`pipeline.credentials`, :mod:`pipeline.access` and :mod:`pipeline.ratelimit`).
- :mod:`pipeline.topics` - creating Kafka topics.
- :mod:`pipeline.core` - the pure sessionizer (no I/O); :mod:`pipeline.store`,
  :mod:`pipeline.worker`, :mod:`pipeline.gateway`, :mod:`pipeline.report`,
  :mod:`pipeline.export`, :mod:`pipeline.client` build on it.
- ``sessionizer`` - the command line (:mod:`pipeline.cli`); :mod:`pipeline.devtools`
  holds the embedded services and test tooling.

Importing :mod:`pipeline` loads nothing else (the pure core stays free of I/O
frameworks); the root's modules named in ``__all__`` load when imported
(``from pipeline import config, exceptions``).
"""

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "access",
    "config",
    "credentials",
    "exceptions",
    "logs",
    "ratelimit",
    "security",
    "topics",
]
