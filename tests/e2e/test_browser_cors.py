"""The unmodified ``@exceptionless/browser`` client in headless Chromium, on a page served
from another origin (another port) than ``sessionizer gateway``: with the page's origin in
``SESSIONIZER_GATEWAY_CORS_ALLOWED_ORIGINS`` its preflights pass, it reads the headers the
gateway exposes, and its events arrive as one session on the sessions topic of a real
``sessionizer worker``; from an origin not listed, the browser stops every call.

The client is installed with npm into ``tests/e2e/exceptionless_browser/node_modules`` once
per test session; the page is ``index.html`` there. Skipped without Chromium
(``apt-get install -y chromium``, as ``.ci/run`` does) or without npm.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp import web
from test_gateway_e2e import KEY, PROJECT, start_gateway, stop_gateway
from test_report_browser import chromium, chromium_path

from pipeline.devtools.services import free_port

BROWSER_DIR = Path(__file__).resolve().parent / "exceptionless_browser"
BUNDLE = BROWSER_DIR / "node_modules" / "@exceptionless" / "browser" / "dist" / "index.bundle.js"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        chromium_path() is None,
        reason="chromium is not installed: apt-get install -y chromium "
        "(or set SESSIONIZER_CHROMIUM to a Chrome or Chromium binary)",
    ),
]


@pytest.fixture(scope="session")
def browser_client() -> Path:
    """``@exceptionless/browser`` installed beside ``index.html`` (npm, once)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is needed to install @exceptionless/browser")
    if not BUNDLE.exists():
        command = "ci" if (BROWSER_DIR / "package-lock.json").exists() else "install"
        try:
            done = subprocess.run(
                [npm, command, "--no-audit", "--no-fund"],
                cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.skip("npm install of @exceptionless/browser took over 300 s")
        if done.returncode != 0:
            pytest.skip(f"npm {command} of @exceptionless/browser failed: {done.stderr[-600:]}")
    return BUNDLE


async def serve_page(port: int, bundle: Path) -> web.AppRunner:
    """The web app's origin: the page and the client's bundle, nothing else."""
    app = web.Application()
    app.router.add_get("/", lambda _: web.FileResponse(BROWSER_DIR / "index.html"))
    app.router.add_get(
        "/exceptionless.js",
        lambda _: web.FileResponse(bundle, headers={"Content-Type": "text/javascript"}),
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def run_pages(bundle: Path, gateway_url: str, pages: dict[str, int]) -> dict[str, Any]:
    """Open the page on each origin (name -> port) in turn; each one's ``window.__result``."""
    runners = [await serve_page(port, bundle) for port in pages.values()]
    executable = chromium_path()
    assert executable is not None
    results: dict[str, Any] = {}
    try:
        async with chromium(executable) as page:
            for name, port in pages.items():
                query = urlencode({"server": gateway_url, "key": KEY, "user": f"{name}@example.com"})
                await page.goto(f"http://127.0.0.1:{port}/?{query}")
                results[name] = await page.wait_for(
                    "window.__result", f"the {name} page's client to finish", timeout_s=60
                )
    finally:
        for runner in runners:
            await runner.cleanup()
    return results


def test_the_exceptionless_browser_client_on_another_origin(
    browser_client: Path,
    start_worker: Any,
    read_topic: Callable[..., list[Any]],
    tmp_path: Path,
) -> None:
    worker = start_worker()
    allowed_port, other_port = free_port(), free_port()
    gateway = start_gateway(
        worker.bootstrap, worker.events_topic, tmp_path / "gateway.log",
        SESSIONIZER_GATEWAY_CORS_ALLOWED_ORIGINS=f"http://127.0.0.1:{allowed_port}",
    )  # fmt: skip
    try:
        results = asyncio.run(
            run_pages(browser_client, gateway.url, {"allowed": allowed_port, "other": other_port})
        )
    finally:
        assert stop_gateway(gateway) == 0, gateway.log()

    allowed, other = results["allowed"], results["other"]
    assert allowed["errors"] == [], allowed
    assert "POST /api/v2/events 202" in allowed["statuses"], allowed
    assert allowed["statuses"].count("GET /api/v2/events/session/heartbeat 200") == 2, allowed
    assert "1" in allowed["configVersions"]  # the exposed header is readable by the page
    session_id = allowed["sessionId"]
    assert isinstance(session_id, str) and session_id

    # the other origin's page: the browser let no call through to the client
    assert other["statuses"] == [] and other["errors"], other
    assert all("Failed to fetch" in error for error in other["errors"]), other
    print(f"\nallowed origin: {allowed}\nother origin: {other}")

    records = read_topic(worker.bootstrap, worker.sessions_topic, 1, timeout=120)
    sessions = [orjson.loads(r.value) for r in records]
    assert [s["session_id"] for s in sessions] == [session_id], sessions
    (session,) = sessions
    assert session["user_id"] == "allowed@example.com" and session["project"] == PROJECT
    assert session["close_reason"] == "ended"
    assert session["type_counts"]["usage"] == 1 and session["type_counts"]["log"] == 1
