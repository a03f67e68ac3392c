"""``/docs`` in a real browser: Swagger UI renders the API from this server alone, with no console error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.db import make_engine, make_session_factory
from service.db.migrate import upgrade
from service.jobs import InProcessQueue
from tests.browser.support import WatchedPage, screenshot
from tests.fixtures.app import api_settings, build_app
from tests.support.live import serve

try:
    from playwright.sync_api import Browser
except ImportError:  # the browser fixture skips, or fails under CI
    Browser = object  # type: ignore[assignment,misc]


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    """The API (SQLite, in-process queue, no model) served by uvicorn on a free loopback port."""
    db_url = f"sqlite:///{tmp_path / 'creme.db'}"
    upgrade(db_url)
    engine, queue = make_engine(db_url), InProcessQueue()
    try:
        with serve(build_app(api_settings(), make_session_factory(engine), queue)) as url:
            yield url
    finally:
        queue.close()
        engine.dispose()


def test_docs_render_offline_without_console_errors(browser: Browser, base_url: str) -> None:
    watched = WatchedPage(browser.new_page())
    page = watched.page

    response = page.goto(f"{base_url}/docs", wait_until="networkidle")
    assert response is not None and response.status == 200
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    shot = screenshot(page, "docs")

    paths = page.locator(".opblock-summary-path").evaluate_all("nodes => nodes.map(n => n.dataset.path)")
    assert "/v1/edits" in paths and "/v1/edits/{edit_id}/apply" in paths
    watched.assert_clean()
    assert f"{base_url}/docs/assets/swagger-ui-bundle.js" in watched.requested
    assert f"{base_url}/openapi.json" in watched.requested
    assert shot.stat().st_size > 10_000
    page.close()
