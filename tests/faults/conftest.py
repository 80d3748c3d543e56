"""The fault suite's markers. Every test here is marked ``faults`` (tests/conftest.py);
those also marked ``routine`` (the reduced fault run, the checker's own tests) are cheap
enough for ``make test`` (``-m "not faults or routine"``); ``make test-faults`` runs the
rest (``-m "faults and not routine"``): the full fault run."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "routine: a fault-suite test make test runs (the reduced run)")
