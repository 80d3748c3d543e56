"""The ``sessionizer`` command line: a thin layer that hands off to the modules.

Each command imports its module lazily so ``sessionizer --help`` stays fast.
Errors of ours (:class:`~pipeline.exceptions.SessionizerError`) print one line
and exit 1, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from pipeline.exceptions import SessionizerError


def _clean_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SessionizerError as exc:
            click.echo(f"sessionizer: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sessionizer-pipeline")
def main() -> None:
    """Sessionization pipeline: Kafka events in, user sessions out.

    Settings come from SESSIONIZER_* environment variables (see README).
    """


@main.command()
@_clean_errors
def worker() -> None:
    """Run a sessionizer worker (joins the consumer group; add processes to scale)."""
    from pipeline.worker.run import run_worker

    run_worker()


if __name__ == "__main__":  # pragma: no cover
    main()
