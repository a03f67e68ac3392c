"""One headless Chromium per browser test module (module scope: Playwright's own event loop ends with the module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.support import launch_browser

try:
    from playwright.sync_api import Browser
except ImportError:  # launch_browser skips, or fails under CI
    Browser = object  # type: ignore[assignment,misc]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_browser() as launched:
        yield launched
