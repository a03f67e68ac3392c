"""``/docs`` in a real browser: Swagger UI renders the API from this server alone, with no console error.

Debian's Chromium (``/usr/bin/chromium``) is driven by Playwright; nothing is downloaded. Without
either the test is skipped, or fails when ``CI=true``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn

from service.db import make_engine, make_session_factory
from service.db.migrate import upgrade
from service.jobs import InProcessQueue
from tests.e2e.support import free_port
from tests.fixtures.app import api_settings, build_app

try:
    from playwright.sync_api import Browser, Route, sync_playwright
except ImportError:  # reported by the browser fixture
    sync_playwright = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/bin/chromium")
LOCAL_HOSTS = ("127.0.0.1", "localhost")
START_SECONDS = 30


def _unavailable(reason: str) -> None:
    """Skip for ``reason``, or fail in CI, where the browser must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    """The API (SQLite, in-process queue, no model) served by uvicorn on a free loopback port."""
    db_url = f"sqlite:///{tmp_path / 'creme.db'}"
    upgrade(db_url)
    engine, queue = make_engine(db_url), InProcessQueue()
    port = free_port()
    app = build_app(api_settings(), make_session_factory(engine), queue)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_SECONDS
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        queue.close()
        engine.dispose()


def test_docs_render_offline_without_console_errors(browser: Browser, base_url: str, tmp_path: Path) -> None:
    page = browser.new_page()
    requested: list[str] = []
    external: list[str] = []
    errors: list[str] = []

    def only_local(route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))

    response = page.goto(f"{base_url}/docs", wait_until="networkidle")
    assert response is not None and response.status == 200
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    page.screenshot(path=tmp_path / "docs.png")

    paths = page.locator(".opblock-summary-path").evaluate_all("nodes => nodes.map(n => n.dataset.path)")
    assert "/v1/edits" in paths and "/v1/edits/{edit_id}/apply" in paths
    assert external == []
    assert f"{base_url}/docs/assets/swagger-ui-bundle.js" in requested and f"{base_url}/openapi.json" in requested
    assert errors == []
    assert (tmp_path / "docs.png").stat().st_size > 10_000
