"""``python -m pipeline.cli``: the ``sessionizer`` command without its console script."""

from pipeline.cli import main

main()
