"""Every private attribute and signature of faust and aiokafka that
:mod:`pipeline.worker.internals` relies on is still there, as it was in the versions
pinned in pyproject.toml. Inspects the installed classes (and a worker app built
without a broker); a failure names the attribute, the installed version and the use
in the internals module's docstring to re-check."""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version
from typing import Any

import aiokafka
import faust
import pytest
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service

from pipeline.config import Settings
from pipeline.worker import internals
from pipeline.worker.app import build_app


def _installed() -> str:
    return ", ".join(f"{name} {version(name)}" for name in internals.CHECKED_VERSIONS)


def _fail(what: str, use: int, why: str) -> None:
    pytest.fail(
        f"{what}: {why} (installed: {_installed()}; checked against: "
        f"{', '.join(f'{n} {v}' for n, v in internals.CHECKED_VERSIONS.items())}). "
        f"pipeline/worker/internals.py use {use} relies on it: adapt that use, or pin the "
        f"checked versions again",
    )


def _params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def require_method(owner: type, name: str, params: list[str], use: int,
                   coroutine: bool | None = None) -> Any:
    """``owner.name`` exists, takes exactly ``params`` and is (or is not) a coroutine."""
    what = f"{owner.__module__}.{owner.__qualname__}.{name}"
    func = getattr(owner, name, None)
    if func is None:
        _fail(what, use, "missing")
    if _params(func) != params:
        _fail(what, use, f"signature is {_params(func)}, expected {params}")
    if coroutine is not None and inspect.iscoroutinefunction(func) != coroutine:
        _fail(what, use, "is a coroutine function" if not coroutine else "is no longer a coroutine function")
    return func


def require_source(func: Any, snippet: str, use: int) -> None:
    """``func``'s source still contains ``snippet`` (how it reads a private attribute)."""
    if snippet not in inspect.getsource(func):
        _fail(f"{func.__module__}.{func.__qualname__}", use, f"no longer contains {snippet!r}")


def test_the_installed_versions_are_the_checked_ones() -> None:
    for name, checked in internals.CHECKED_VERSIONS.items():
        if version(name) != checked:
            _fail(name, 0, f"installed {version(name)}, every use was checked against {checked}")


def test_use_1_the_consumer_thread_reaches_the_aiokafka_consumer() -> None:
    require_method(faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer", ["self"], 1,
                   coroutine=False)
    require_source(faust_aiokafka.AIOKafkaConsumerThread._ensure_consumer, "self._consumer", 1)
    require_method(aiokafka.AIOKafkaConsumer, "last_poll_timestamp", ["self", "partition"], 1,
                   coroutine=False)
    require_source(faust_consumer.ThreadDelegateConsumer.__init__, "self._thread = self._new_consumer_thread()", 1)


def test_use_2_the_consumer_commits_explicit_offsets() -> None:
    for owner in (faust_consumer.Consumer, faust_aiokafka.Consumer):
        require_method(owner, "_commit", ["self", "offsets"], 2, coroutine=True)


def test_use_3_the_fetch_wait_is_read_when_the_consumer_starts() -> None:
    require_method(faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer",
                   ["self", "transport"], 3, coroutine=False)
    require_source(aiokafka.AIOKafkaConsumer.start, "fetch_max_wait_ms=self._fetch_max_wait_ms", 3)

    async def build() -> aiokafka.AIOKafkaConsumer:
        return aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", fetch_max_wait_ms=1500)

    consumer = asyncio.run(build())
    if getattr(consumer, "_fetch_max_wait_ms", None) != 1500:
        _fail("aiokafka.AIOKafkaConsumer._fetch_max_wait_ms", 3, "not set from fetch_max_wait_ms")
    internals.set_fetch_max_wait(consumer, internals.fetch_wait_ms(0.2))
    assert consumer._fetch_max_wait_ms == 200
    assert internals.fetch_wait_ms(0.001) == internals.FETCH_WAIT_MIN_MS
    assert internals.fetch_wait_ms(10.0) == internals.FETCH_WAIT_MAX_MS


def test_use_4_the_fetch_loop_it_replaces() -> None:
    require_method(faust_consumer.ThreadDelegateConsumer, "_new_consumer_thread", ["self"], 4,
                   coroutine=False)
    if not issubclass(faust_aiokafka.Consumer, faust_consumer.ThreadDelegateConsumer):
        _fail("faust.transport.drivers.aiokafka.Consumer", 4, "no longer a ThreadDelegateConsumer")
    require_method(faust_consumer.Consumer, "_drain_messages", ["self", "fetcher"], 4, coroutine=True)
    require_method(faust_consumer.Consumer, "_wait_next_records", ["self", "timeout"], 4,
                   coroutine=True)
    # faust's own loop is what the replacement mirrors: stop events and stopped errors
    require_source(faust_consumer.Consumer._drain_messages, "cast(Service, fetcher)._stopped.is_set", 4)
    require_source(faust_consumer.Consumer._drain_messages, "except self.consumer_stopped_errors", 4)
    if not isinstance(faust_aiokafka.Consumer.consumer_stopped_errors, tuple):
        _fail("faust.transport.drivers.aiokafka.Consumer.consumer_stopped_errors", 4, "not a tuple")
    require_source(Service.__init__, "self._stopped = self._new_stopped_event()", 4)
    # the batch consumer builds its thread as faust's own consumer does
    require_source(faust_aiokafka.Consumer._new_consumer_thread,
                   "AIOKafkaConsumerThread(self, loop=self.loop, beacon=self.beacon)", 4)


def test_use_5_the_app_builds_its_transport() -> None:
    require_method(faust.App, "_new_transport", ["self"], 5, coroutine=False)
    require_source(faust.App.transport.fget, "self._new_transport()", 5)  # type: ignore[attr-defined]
    if faust_aiokafka.Transport.Consumer is not faust_aiokafka.Consumer:
        _fail("faust.transport.drivers.aiokafka.Transport.Consumer", 5, "is no longer its Consumer")


def test_use_6_the_app_makes_its_directories_in_one_method(tmp_path: Any, monkeypatch: Any) -> None:
    require_method(faust.App, "_create_directories", ["self"], 6, coroutine=False)
    require_source(faust.App.on_first_start, "self._create_directories()", 6)
    require_source(faust.App._create_directories, "self.conf.tabledir.mkdir(", 6)
    # a worker app started in a directory leaves nothing there
    monkeypatch.chdir(tmp_path)
    app = build_app(Settings(web_port=1))
    asyncio.run(app.on_first_start())
    assert list(tmp_path.iterdir()) == []
    # what faust itself does there: the directory the override keeps out
    faust.App._create_directories(app)
    assert [p.name for p in tmp_path.iterdir()] == [f"{app.conf.id}-data"]


def test_a_worker_app_wires_its_consumer_through_the_overrides() -> None:
    """The overrides are the ones faust calls: the app's consumer is the batch consumer,
    its thread the batch thread, both with the private attributes the uses read."""
    app = build_app(Settings(web_port=1))
    consumer = app.consumer
    assert isinstance(consumer, internals.BatchConsumer)
    thread = consumer._thread
    assert isinstance(thread, internals.BatchConsumerThread)
    assert hasattr(consumer, "_stopped") and callable(consumer._stopped.is_set)
    with pytest.raises(Exception, match="not yet started"):  # no consumer before start()
        internals.last_fetch_ms(consumer, TP("sessionizer-events", 0))
