"""Sessionization pipeline: raw user events on Kafka become user sessions.

Public surface:

- :mod:`pipeline.core` - the pure sessionizer (no I/O).
- :mod:`pipeline.config` - settings from ``SESSIONIZER_*`` environment variables.
- :mod:`pipeline.exceptions` - the exception tree.
- ``sessionizer`` - the command line (:mod:`pipeline.cli`).
"""

__version__ = "0.1.0"
