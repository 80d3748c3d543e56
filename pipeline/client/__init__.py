"""The Python client, kept importable as ``pipeline.client``: it lives in the light
``sessionizer_client`` package (``clients/python``), which publishing services install
without the worker. See docs/publishing.md.
"""

from sessionizer_client import *  # noqa: F403  (the same names, one list of them)
from sessionizer_client import __all__ as __all__
