"""pipeline.devtools.process: start, ready, stop, kill, restart, and what a failure says.

The children are small Python stand-ins for ``sessionizer`` (given as ``argv``) serving
``/healthz`` on loopback, plus the real ``sessionizer`` exiting on a bad setting."""

from __future__ import annotations

import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.devtools.process import ProcessNotReady, SessionizerProcess, settings_env

# a stand-in for `sessionizer worker`: /healthz on SESSIONIZER_WEB_PORT after a delay,
# partitions [0, 1], and /metrics counting them (CLAIMED of them, default 2); on SIGTERM it logs and exits 0 (or ignores it with IGNORE_TERM=1)
FAKE_WORKER = textwrap.dedent("""
    import http.server, json, os, signal, sys, time
    if os.environ.get("IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        def term(*_):
            print("stopping on SIGTERM", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, term)
    print("args", sys.argv[1:], "prefix", os.environ.get("SESSIONIZER_REDIS_KEY_PREFIX"), flush=True)
    time.sleep(float(os.environ.get("DELAY_S", "0.3")))
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"ok": True, "partitions": [0, 1]}).encode()
            if self.path == "/metrics":
                claimed = os.environ.get("CLAIMED", "2")
                body = f"# HELP x\\nsessionizer_assigned_partitions {claimed}.0\\n".encode()
            self.send_response(200 if self.path in ("/healthz", "/metrics") else 404)
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *_):
            pass
    port = int(os.environ["SESSIONIZER_WEB_PORT"])
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
""")


@pytest.fixture
def fake(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_sessionizer.py"
    script.write_text(FAKE_WORKER)
    return [sys.executable, str(script)]


def test_settings_become_exact_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONIZER_LEFTOVER", "x")
    env = settings_env({"redis_key_prefix": "t:", "SESSIONIZER_WEB_PORT": 0, "tls": True},
                       {"EXTRA": "1"})
    assert "SESSIONIZER_LEFTOVER" not in env
    assert env["SESSIONIZER_REDIS_KEY_PREFIX"] == "t:"
    assert env["SESSIONIZER_WEB_PORT"] == "0"
    assert env["SESSIONIZER_TLS"] == "true"
    assert env["EXTRA"] == "1"


def test_start_waits_for_healthz_then_stops_with_sigterm(fake: list[str], tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    process = SessionizerProcess("worker", {"redis_key_prefix": "p:"}, argv=fake, log_path=log,
                                 args=["--flag"], timeout_s=20)
    port = process.ports["web_port"]
    assert port > 0 and process.env["SESSIONIZER_WEB_PORT"] == str(port)
    assert process.health_url == f"http://127.0.0.1:{port}/healthz"
    with process:
        assert process.running
        assert process.is_ready()
        assert "args ['worker', '--flag'] prefix p:" in process.log_text()
    assert not process.running
    assert process.returncode == 0
    assert "stopping on SIGTERM" in process.log_tail()


def test_not_ready_before_healthz_answers(fake: list[str], tmp_path: Path) -> None:
    process = SessionizerProcess("worker", argv=fake, env={"DELAY_S": "30"},
                                 log_path=tmp_path / "w.log")
    process.spawn()
    try:
        time.sleep(0.5)
        assert process.running and not process.is_ready()
        with pytest.raises(ProcessNotReady, match=r"not ready within 0\.5 s .*/healthz.*ends with:\nargs"):
            process.wait_ready(0.5)
        assert not process.running  # stopped when it timed out
    finally:
        process.kill()


def test_a_worker_claiming_its_partitions_is_not_ready_yet(fake: list[str], tmp_path: Path) -> None:
    process = SessionizerProcess("worker", argv=fake, env={"CLAIMED": "1", "DELAY_S": "0"},
                                 log_path=tmp_path / "w.log")
    process.spawn()
    try:
        assert not process.ready_within(2.0)  # /healthz lists 2, the gauge counts 1
        assert process.running
    finally:
        process.stop()


def test_stop_escalates_to_sigkill_and_restart_keeps_ports(fake: list[str], tmp_path: Path) -> None:
    process = SessionizerProcess("worker", argv=fake, env={"IGNORE_TERM": "1"},
                                 log_path=tmp_path / "w.log", grace_s=0.5, timeout_s=20)
    process.start()
    try:
        port, first = process.ports["web_port"], process.pid
        assert process.stop() == -signal.SIGKILL
        process.restart()
        assert process.pid != first and process.ports["web_port"] == port and process.is_ready()
        assert process.log_text().count("args ['worker']") == 2  # one log, appended
        assert process.kill() == -signal.SIGKILL
        assert not process.running
    finally:
        process.kill()


def test_ready_callback_for_commands_without_health_endpoint(fake: list[str], tmp_path: Path) -> None:
    process = SessionizerProcess(
        "export", argv=fake, env={"SESSIONIZER_WEB_PORT": "0", "DELAY_S": "30"},
        log_path=tmp_path / "e.log", ready=lambda p: "prefix" in p.log_text(), timeout_s=20,
    )
    assert process.health_url is None and process.ports == {}
    with process:
        assert "args ['export']" in process.log_text()
    assert not process.running


def test_command_exiting_early_names_its_code_and_log_tail(tmp_path: Path) -> None:
    """The real ``sessionizer worker`` refuses a bad setting and exits before it is ready."""
    process = SessionizerProcess("worker", {"inactivity_timeout": "-5"}, log_path=tmp_path / "w.log")
    with pytest.raises(ProcessNotReady) as failure:
        process.start(timeout_s=60)
    message = str(failure.value)
    assert "sessionizer worker exited with code" in message
    assert "before it was ready" in message and str(tmp_path / "w.log") in message
    assert "inactivity" in message.lower()  # the tail of its log says what was wrong
    assert not process.running
