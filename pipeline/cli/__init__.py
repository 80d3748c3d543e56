"""The ``sessionizer`` command line: the click group in :mod:`pipeline.cli.commands`,
one module per command beside it (``status``, ``query``, ``tail``, ``produce``, ``dev``)."""

from pipeline.cli.commands import main

__all__ = ["main"]
