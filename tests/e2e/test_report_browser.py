"""The Sessions report in a real browser: headless Chromium, driven over the Chrome
DevTools Protocol (aiohttp's websocket client, no extra package), against the
gateway app (``create_app``, as ``sessionizer gateway`` serves it) on the session's
redis-server holding open and closed sessions written the way the worker writes them.

It checks what a person sees: the list with an online session whose duration
ticks and closed ones with their close reason, the dashboard numbers, a session
page with its events, an event opening to its fields, the session's data, and
the "active only" filter. Screenshots go to ``artifacts/report-browser/``.

Skipped when no Chromium is installed (``apt-get install -y chromium``); set
``SESSIONIZER_CHROMIUM`` to use another Chrome or Chromium binary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from test_report_data import MIN, demo_events, event, populate

from pipeline.core.event import Event
from pipeline.devtools.services import EmbeddedRedis
from pipeline.gateway.app import create_app
from pipeline.gateway.publisher import Record
from pipeline.gateway.settings import GatewaySettings
from pipeline.store.redis import RedisStore

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "report-browser"
WIDTH, HEIGHT = 1360, 900
TOKEN = "report-token-for-the-browser-Q7x"
NO_VALUE = "\u2013"  # what the page shows for "none" (an en dash)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    f"--window-size={WIDTH},{HEIGHT}",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def chromium_path() -> str | None:
    configured = os.environ.get("SESSIONIZER_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


pytestmark = pytest.mark.skipif(
    chromium_path() is None,
    reason="chromium is not installed: apt-get install -y chromium "
    "(or set SESSIONIZER_CHROMIUM to a Chrome or Chromium binary)",
)


# -- Chrome DevTools Protocol -------------------------------------------------------------


class CdpError(AssertionError):
    pass


class Cdp:
    """One websocket to the browser; commands to a page carry its ``sessionId``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = orjson.loads(message.data)
            if "id" not in data:
                self.events.append(data)
                continue
            future = self.pending.pop(data["id"], None)
            if future is None or future.done():
                continue
            if "error" in data:
                future.set_exception(CdpError(f"CDP error: {data['error']}"))
            else:
                future.set_result(data.get("result", {}))
        for future in self.pending.values():
            if not future.done():
                future.set_exception(CdpError("the browser closed the DevTools connection"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        message_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[message_id] = future
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send_str(orjson.dumps(message).decode())
        return await asyncio.wait_for(future, 30)


class Page:
    """A tab: evaluate, wait for a condition, click like a mouse, take screenshots."""

    def __init__(self, cdp: Cdp, session: str) -> None:
        self.cdp = cdp
        self.session = session

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.cdp.send(method, params, self.session)

    async def eval(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout_s: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                await self.screenshot("failure")
                raise AssertionError(f"timed out waiting for {what} ({expression})")
            await asyncio.sleep(0.1)

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'", f"{url} to load")

    async def click(self, selector: str) -> None:
        """A left click in the middle of the element, as a mouse does it."""
        box = await self.eval(
            f"""(() => {{
                const el = document.querySelector({orjson.dumps(selector).decode()});
                if (!el) return null;
                el.scrollIntoView({{block: 'center'}});
                const r = el.getBoundingClientRect();
                return {{x: r.left + Math.min(r.width / 2, 40), y: r.top + r.height / 2}};
            }})()"""
        )
        assert box is not None, f"nothing on the page matches {selector}"
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"],
                button="left" if kind != "mouseMoved" else "none", clickCount=1,
            )

    async def text(self, selector: str) -> str:
        return str(
            await self.eval(
                f"document.querySelector({orjson.dumps(selector).decode()})?.innerText ?? ''"
            )
        )

    async def screenshot(self, name: str, *, full_page: bool = False) -> Path:
        """The viewport (scrolled to the top), or the whole page."""
        await self.eval("window.scrollTo(0, 0)")
        height = HEIGHT
        if full_page:
            metrics = await self.call("Page.getLayoutMetrics")
            height = min(metrics["cssContentSize"]["height"], 6000)
        shot = await self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=full_page,
            clip={"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1},
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        import base64

        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def problems(self, since: int = 0) -> list[str]:
        """Script errors, console errors, failed requests and CSP violations the page
        reported (from the ``since``-th browser event on)."""
        found = []
        for e in self.cdp.events[since:]:
            if e.get("sessionId") != self.session:
                continue
            params = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif e["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(f"console.error: {params.get('args')}")
            elif e["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return found


@contextlib.asynccontextmanager
async def chromium(executable: str) -> AsyncIterator[Page]:
    # chromium's helper processes can still be writing its profile while the directory
    # goes: they are stopped with their group below, and what they leave is let be
    with tempfile.TemporaryDirectory(prefix="report-chromium-", ignore_cleanup_errors=True) as profile:
        log_path = Path(profile) / "chromium.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/data", "about:blank"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            port_file = Path(profile) / "data" / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"chromium did not start (exit {process.poll()}):\n"
                        + log_path.read_text(errors="replace")[-3000:]
                    )
                await asyncio.sleep(0.1)
            port, path = port_file.read_text().splitlines()[:2]
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0) as ws,
            ):
                cdp = Cdp(ws)
                target = await cdp.send("Target.createTarget", {"url": "about:blank"})
                attached = await cdp.send(
                    "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
                )
                page = Page(cdp, attached["sessionId"])
                for domain in ("Page", "Runtime", "Log"):
                    await page.call(f"{domain}.enable")
                await page.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False,
                )
                await page.call("Emulation.setTimezoneOverride", timezoneId="UTC")
                await page.call("Emulation.setLocaleOverride", locale="en-GB")
                yield page
                with contextlib.suppress(Exception):
                    await cdp.send("Browser.close")
                cdp.reader.cancel()
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its helpers (zygote, GPU, crashpad)


# -- the data and the gateway ----------------------------------------------------------------


def background_events(now_ms: int) -> list[Event]:
    """Thirty closed sessions over the last day, so the dashboard has a shape."""
    events: list[Event] = []
    for i in range(30):
        start = now_ms - (23 * 60 - i * 43) * MIN - (i * 7919) % (30 * MIN)
        user = f"user{i % 17:02d}@example.org"
        project = "shop" if i % 3 else "blog"
        events.append(event("session", start, user=user, project=project, name=f"User {i % 17}"))
        for k in range(1 + i % 4):
            events.append(event("usage", start + (k + 1) * MIN, user=user, project=project,
                                source=("search", "product-page", "checkout", "cart")[k]))
        if i % 5 == 0:
            events.append(event("error", start + 2 * MIN, user=user, project=project,
                                source="NetworkError", message="fetch failed"))
        if i % 2 == 0:
            events.append(event("sessionend", start + (6 + i % 9) * MIN, user=user, project=project))
    return events


async def start_gateway() -> tuple[web.AppRunner, str]:
    async def publish(records: Sequence[Record]) -> None:
        raise AssertionError("the report test publishes nothing")

    app = create_app({"ingest-key-123456": "shop"}, publish, settings=GatewaySettings())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


# -- the test ----------------------------------------------------------------------------------


def test_report_in_a_browser(redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    executable = chromium_path()
    assert executable is not None  # else skipped (pytestmark)
    prefix = f"sz-report-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("SESSIONIZER_REDIS_URL", redis_server.url)
    monkeypatch.setenv("SESSIONIZER_REDIS_KEY_PREFIX", prefix)
    monkeypatch.delenv("SESSIONIZER_REPORT_TOKEN", raising=False)
    now_ms = time.time_ns() // 1_000_000
    demo, background = demo_events(now_ms), background_events(now_ms)
    users = {e.user_id for e in demo + background if e.user_id is not None}
    asyncio.run(
        asyncio.wait_for(scenario(executable, prefix, demo, background, len(users), monkeypatch), 240)
    )


async def scenario(
    executable: str,
    prefix: str,
    demo: list[Event],
    background: list[Event],
    users: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = RedisStore.from_url(os.environ["SESSIONIZER_REDIS_URL"], prefix)
    now_ms = max(e.arrival_ms for e in demo) + MIN
    try:
        closed = await populate(store, demo, clock_ms=now_ms, partition=0)
        closed += await populate(store, background, clock_ms=now_ms, partition=3)
    finally:
        await store.close()
    ids = {r["user_id"] or r["session_id"]: r["session_id"] for r in closed}
    sessions = len(closed) + 2  # alice and the anonymous session are open
    # the report always needs a credential: the operator token here (an API key
    # opens its own project's sessions the same way)
    monkeypatch.setenv("SESSIONIZER_REPORT_TOKEN", TOKEN)
    runner, base = await start_gateway()
    try:
        async with chromium(executable) as page:
            await check_token_sign_in(page, base)
            # the refused API calls before sign-in are the only complaints
            for problem in page.problems():
                assert "401 (Unauthorized)" in problem, problem
            seen = len(page.cdp.events)
            await check_list(page, base, sessions=sessions, users=users)
            await check_closed_session(page, base, ids["bob@example.com"])
            await check_online_session(page, base)
            await check_active_only(page, base)
            assert page.problems(since=seen) == []
    finally:
        await runner.cleanup()


async def check_list(page: Page, base: str, *, sessions: int, users: int) -> None:
    await page.goto(f"{base}/sessions")
    await page.wait_for(
        f"document.querySelectorAll('#sessions tbody tr').length === {min(sessions, 100)}",
        "the session list",
    )
    await page.wait_for("document.querySelectorAll('#chart svg .chart-bars rect').length > 5", "the chart")
    rows = await page.eval(
        """[...document.querySelectorAll('#sessions tbody tr')].map(tr =>
             [...tr.cells].map(td => td.innerText.trim()))"""
    )
    by_user = {row[0].split("\n")[0]: row for row in rows}
    # columns: user, status, started, duration, events, errors, project, session
    alice, bob, carol = by_user["Alice"], by_user["Bob"], by_user["carol"]
    assert alice[1] == "online" and alice[6] == "shop"
    assert (bob[1], bob[4], bob[5]) == ("ended", "4", "1")
    assert bob[3] == "4m 00s"
    assert (carol[1], carol[4], carol[5]) == ("timeout", "2", NO_VALUE)
    assert by_user["anonymous"][1] == "online"
    assert [row[0].split("\n")[0] for row in rows[:2]] == ["anonymous", "Alice"]  # newest first

    # an online session's duration ticks in the page, from its start
    live = "#sessions tbody tr.is-online .duration.live"
    first = await page.text(live)
    await page.wait_for(
        f"document.querySelector('{live}').innerText !== {orjson.dumps(first).decode()}",
        "the online duration to tick",
        timeout_s=3,
    )

    tiles = await page.eval(
        """Object.fromEntries([...document.querySelectorAll('.tile')].map(t =>
             [t.dataset.stat, [t.querySelector('[data-value]').innerText,
                               t.querySelector('[data-sub]').innerText]]))"""
    )
    assert tiles["sessions"][0] == str(sessions)
    assert tiles["sessions"][1].startswith("2 online")
    assert tiles["users"][0] == str(users)
    assert tiles["per-hour"][0] == f"{sessions / 24:.1f}"
    assert tiles["avg-duration"][1] == f"of {sessions - 2} closed sessions"
    assert tiles["avg-duration"][0] not in ("", NO_VALUE)
    await page.screenshot("01-list-and-dashboard")
    await page.screenshot("01-list-full-page", full_page=True)


async def check_closed_session(page: Page, base: str, bob_id: str) -> None:
    await page.click(f'#sessions tbody tr[data-session-id="{bob_id}"] td:nth-child(3)')
    await page.wait_for(f"location.pathname === '/sessions/{bob_id}'", "the session page URL")
    # a session id is unique within its project only: the link names the project too
    assert await page.eval("location.search") == "?project=shop"
    await page.wait_for("document.querySelectorAll('#events tr.event-row').length === 4", "the events")
    assert "ended" in await page.text(".session-head h1")
    types = await page.eval(
        "[...document.querySelectorAll('#events tr.event-row td:nth-child(3)')].map(td => td.innerText)"
    )
    assert types == ["session", "usage", "error", "sessionend"]
    assert await page.eval("!document.querySelector('#events tr.event-detail:not([hidden])')")

    await page.click('#events tr.event-row[data-event-index="2"]')
    shown = await page.wait_for(
        "document.querySelector('#events tr.event-detail:not([hidden])')?.innerText",
        "the error event's fields",
    )
    for field in ("id", "type", "timestamp", "source", "message", "value", "partition", "offset"):
        assert f"\n{field}\n" in f"\n{shown.lower()}"
    assert '"price is not a number"' in shown and '"TypeError"' in shown
    data = await page.text("#session-data")
    assert "@error" in data and "TypeError" in data
    await page.screenshot("02-closed-session-event-open", full_page=True)


async def check_online_session(page: Page, base: str) -> None:
    await page.click("a.back")
    await page.wait_for("location.pathname === '/sessions'", "the list URL")
    await page.wait_for("!!document.querySelector('#sessions tbody tr.is-online')", "the list")
    await page.click("#sessions tbody tr.is-online:nth-child(2) a.row-link")
    # the page is drawn again when Alice's session arrives: until then it may still hold
    # the previous session's head and events
    await page.wait_for("location.pathname.startsWith('/sessions/') && "
                        "(document.querySelector('.session-head')?.innerText || '').includes('Alice')",
                        "alice's session page")
    await page.wait_for("document.querySelectorAll('#events tr.event-row').length === 4", "alice's events")
    head = await page.text(".session-head")
    assert "Alice" in head and "online" in head and "online for" in head.lower()
    await page.click('#events tr.event-row[data-event-index="3"]')
    shown = await page.wait_for(
        "document.querySelector('#events tr.event-detail:not([hidden])')?.innerText",
        "the log event's fields",
    )
    assert '"added 1 item"' in shown and '"cart"' in shown and '"log"' in shown
    data = await page.text("#session-data")
    for text in ("@environment", '"Firefox 133"', "cart_id", '"pro"'):
        assert text in data
    await page.screenshot("03-online-session-event-open", full_page=True)


async def check_active_only(page: Page, base: str) -> None:
    await page.goto(f"{base}/sessions")
    await page.wait_for("document.querySelectorAll('#sessions tbody tr').length > 2", "the list")
    await page.click("#filters input[name=active]")
    await page.wait_for("location.search === '?active=true'", "the filter in the URL")
    await page.wait_for("document.querySelectorAll('#sessions tbody tr').length === 2", "online rows only")
    statuses = await page.eval(
        "[...document.querySelectorAll('#sessions tbody tr td:nth-child(2)')].map(td => td.innerText.trim())"
    )
    assert statuses == ["online", "online"]
    await page.screenshot("04-active-only")
    await page.call(
        "Emulation.setEmulatedMedia",
        features=[{"name": "prefers-color-scheme", "value": "dark"}],
    )
    await page.goto(f"{base}/sessions")
    await page.wait_for("document.querySelectorAll('#sessions tbody tr').length > 2", "the list")
    await page.screenshot("05-list-dark")


async def check_token_sign_in(page: Page, base: str) -> None:
    """The page asks for a key or token, keeps it for the tab, then shows the report."""
    await page.call("Emulation.setEmulatedMedia", features=[])
    await page.goto(f"{base}/sessions")
    await page.wait_for("!document.querySelector('#signin').hidden", "the token form")
    assert await page.eval("document.querySelector('#list-view').hidden")
    await page.screenshot("06-token-asked")
    await page.click("#token")
    await page.call("Input.insertText", text=TOKEN)
    await page.click("#signin-form button[type=submit]")
    await page.wait_for("document.querySelectorAll('#sessions tbody tr').length > 2", "the list after sign-in")
    assert await page.eval("document.querySelector('#signin').hidden")
