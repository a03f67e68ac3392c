"""What the browser tests share: Chromium via Playwright, an app on uvicorn, pages that may not leave the machine.

Debian's Chromium (``/usr/bin/chromium``) is driven by Playwright; nothing is downloaded. Without
either, a test is skipped, or fails when ``CI=true``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Route, sync_playwright
except ImportError:  # reported by launch_browser
    sync_playwright = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/bin/chromium")
LOCAL_HOSTS = ("127.0.0.1", "localhost")
START_SECONDS = 30
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
_FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")


def unavailable(reason: str) -> None:
    """Skip for ``reason``, or fail in CI, where the browser must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def launch_browser() -> Iterator[Browser]:
    """Headless Chromium, or a skip (a failure under CI) when it or Playwright is missing."""
    if sync_playwright is None:
        unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            browser.close()


class WatchedPage:
    """A page whose requests must stay on this machine and whose console must stay free of errors.

    Every request is routed: one to a host other than 127.0.0.1/localhost is aborted and recorded.
    Console errors and uncaught exceptions are recorded, except Chromium's "Failed to load resource"
    line for an HTTP status the test said to expect (a 422 it provokes, say).
    """

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requested: list[str] = []
        self.external: list[str] = []
        self.errors: list[str] = []
        self.expected_statuses: set[int] = set()
        page.route("**/*", self._only_local)
        page.on("request", lambda request: self.requested.append(request.url))
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _only_local(self, route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            self.external.append(route.request.url)
            route.abort()

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        failed = _FAILED_LOAD.search(message.text)
        if failed and int(failed.group(1)) in self.expected_statuses:
            return
        self.errors.append(message.text)

    def expect_status(self, *statuses: int) -> None:
        """Answers with these statuses are expected from now on: their console lines are not errors."""
        self.expected_statuses.update(statuses)

    def assert_clean(self) -> None:
        assert self.external == [], f"requests left the machine: {self.external}"
        assert self.errors == [], f"console errors: {self.errors}"


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as a test artifact under test-artifacts/browser/ and print its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")
    return path
