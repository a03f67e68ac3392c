"""Helpers every suite shares: waiting for a condition, checking a problem+json response, decoding a PNG."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

PROBLEM = "application/problem+json"
PROBLEM_TYPES = "https://creme.dev/problems/"
LEAKS = ("Traceback", 'File "', "psycopg", "sqlalchemy", "redis.exceptions")  # internals no problem may show


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 240.0, *, interval: float = 0.5, logs: Iterable[Path] = ()
) -> Any:
    """Poll ``check`` until it returns something truthy, and return that.

    A connection error counts as not yet. After ``timeout`` seconds fail, naming ``what``, the last
    value and the tails of the (process) ``logs``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = check()
        except httpx.TransportError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}{tails}")
        time.sleep(interval)


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with ``status`` (and type ``.../slug``) and no internals; its body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == PROBLEM, response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith(PROBLEM_TYPES), body
    assert body["title"] and "detail" in body and "instance" in body, body
    if slug is not None:
        assert body["type"] == PROBLEM_TYPES + slug, body
    for leak in LEAKS:
        assert leak not in response.text, response.text
    return body


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of PNG ``data``, after checking its signature and decoding it."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size
