"""Development and test tooling: the embedded broker and redis-server, the Apache Kafka
assembly, the Redis cluster fixture, the traffic generator, the end-to-end checker and
the process helper (:mod:`pipeline.devtools.process`) that starts and drives
``sessionizer`` processes for the tests, the benchmark and local runs. Nothing here runs
in production.

Nothing outside :mod:`pipeline.devtools` and :mod:`pipeline.cli` imports it (see
tests/unit/test_layers.py).
"""
