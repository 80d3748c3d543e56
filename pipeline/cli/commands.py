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

    Settings come from SESSIONIZER_* environment variables (docs/configuration.md).
    """


@main.command()
@_clean_errors
def worker() -> None:
    """Run a sessionizer worker (joins the consumer group; add processes to scale)."""
    from pipeline.worker.run import run_worker

    run_worker()


@main.command("api-key")
@click.option("--file", "path", default=None,
              help="keep the key in this file as <key>:<project>: created (mode 0600) when missing")
@click.option("--project", default="demo", show_default=True, help="the project of a new key in --file")
@_clean_errors
def api_key(path: str | None, project: str) -> None:
    """Print a new random API key; with --file, the key kept there (made on first use)."""
    from pipeline.credentials import ensure_key_file, generate_key

    if path is None:
        click.echo(generate_key())
        return
    key, made = ensure_key_file(path, project)
    click.echo(f"{'new' if made else 'existing'} API key for project {project!r} ({path}): {key}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON document, for machines")
@click.option("--sample", default=1.0, show_default=True,
              help="seconds between the two end-offset samples the rates come from (0 = no rates)")
@_clean_errors
def status(as_json: bool, sample: float) -> None:
    """The cluster at a glance: group members, partitions (owner, offsets, lag, open
    sessions, epoch), workers, rates and the effective session rules."""
    from pipeline.cli.status import run_status

    run_status(as_json=as_json, sample_s=sample)


@main.group()
def sessions() -> None:
    """Query live sessions in Redis."""


@sessions.command("live")
@click.option("--project", help="only this project")
@click.option("--user", help="only this user identity")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON record per line")
@_clean_errors
def sessions_live(project: str | None, user: str | None, limit: int, as_json: bool) -> None:
    """List open sessions (all, of a project, or of a user)."""
    from pipeline.cli.query import live

    live(project, user, limit, as_json)


@sessions.command("show")
@click.argument("session_id")
@click.option("--project", help="the session's project (ids are unique within a project; "
              "without it, the latest started session with this id in any project)")
@click.option("--json", "as_json", is_flag=True, help="the session record as JSON")
@_clean_errors
def sessions_show(session_id: str, project: str | None, as_json: bool) -> None:
    """Show one open session with its events."""
    from pipeline.cli.query import show

    if not show(session_id, as_json, project=project):
        sys.exit(1)


@main.command()
@click.option("--users", default=200, show_default=True, help="simulated users")
@click.option("--rate", default=200.0, show_default=True, help="events per second (0 = as fast as possible)")
@click.option("--duration", default=60.0, show_default=True, help="seconds to run (0 = until Ctrl-C)")
@click.option("--seed", default=1, show_default=True, help="random seed (same seed, same traffic)")
@click.option("--bad-ratio", default=0.005, show_default=True, help="share of deliberately bad records")
@click.option("--quiet", is_flag=True, help="no progress display")
@_clean_errors
def produce(users: int, rate: float, duration: float, seed: int, bad_ratio: float, quiet: bool) -> None:
    """Publish realistic synthetic user traffic to the events topic."""
    from pipeline.cli.produce import run_produce

    run_produce(users=users, rate=rate, duration=duration, seed=seed, bad_ratio=bad_ratio, quiet=quiet)


@main.command()
@click.option("--from-beginning", is_flag=True, help="print the topic's whole history first")
@click.option("--json", "as_json", is_flag=True, help="print raw JSON records, one per line")
@_clean_errors
def tail(from_beginning: bool, as_json: bool) -> None:
    """Follow the sessions topic and print closed sessions readably."""
    from pipeline.cli.tail import run_tail

    run_tail(from_beginning=from_beginning, as_json=as_json)



@main.command()
@click.option("--to", "url", default="sqlite:///sessions.db", show_default=True,
              help="database URL: sqlite:///path.db or postgresql://user:pass@host/db")
@click.option("--table", default="sessions", show_default=True, help="the session table's name")
@click.option("--from-beginning", is_flag=True,
              help="partitions the table has no offsets for start at the topic's beginning "
                   "(else at its end)")
@click.option("--group", "group_id", default="sessionizer-export", show_default=True,
              help="consumer group: run several exporters with one group for more partitions")
@click.option("--progress", "progress_s", default=5.0, show_default=True,
              help="seconds between progress lines (0: none)")
@click.option("--batch", default=2000, show_default=True,
              help="most records read and written per transaction")
@_clean_errors
def export(url: str, table: str, from_beginning: bool, group_id: str, progress_s: float,
           batch: int) -> None:
    """Write closed sessions into a database table, exactly once (until Ctrl-C or SIGTERM)."""
    from pipeline.export.run import run_export

    run_export(url, table=table, from_beginning=from_beginning, group_id=group_id,
               progress_s=progress_s, batch_size=batch)

@main.command()
@click.option("--users", default=300, show_default=True, help="simulated users")
@click.option("--rate", default=300.0, show_default=True, help="events per second")
@click.option("--inactivity-timeout", default=300.0, show_default=True,
              help="seconds of inactivity that close a session, in the traffic's simulated time "
                   "(the producer runs its clock faster than wall time to reach --rate)")
@click.option("--partitions", default=4, show_default=True)
@click.option("--broker", "broker_kind", type=click.Choice(["tansu", "kafka"]), default="tansu",
              show_default=True,
              help="tansu (in memory, needs nothing) or kafka (Apache Kafka; needs Java 17 and Maven)")
@_clean_errors
def dev(users: int, rate: float, inactivity_timeout: float, partitions: int, broker_kind: str) -> None:
    """Run everything locally: broker, Redis, a worker, the producer, and a live view."""
    from pipeline.cli.dev import run_dev

    run_dev(users, rate, inactivity_timeout, partitions, broker_kind)


@main.command()
@_clean_errors
def gateway() -> None:
    """Run the HTTP gateway (Exceptionless-compatible API and /v1/events)."""
    from pipeline.gateway.server import run_gateway

    run_gateway()

