"""Development and test tooling: embedded broker and redis-server, the Apache Kafka
assembly, the Redis cluster fixture, the traffic generator and the end-to-end checker.

Nothing outside :mod:`pipeline.devtools` and :mod:`pipeline.cli` imports it (see
tests/unit/test_layers.py).
"""
