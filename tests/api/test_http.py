"""HTTP below the routes: HEAD answers like GET without a body; a malformed Content-Length is a 400 problem;
``/docs`` needs nothing but this server (tests/browser renders it in Chromium).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message

from tests.support import PROBLEM

GETS = ["/v1/edits", "/v1/jobs", "/v1/model", "/v1/edits/unknown", "/healthz", "/openapi.json", "/docs", "/metrics"]


@pytest.mark.parametrize("path", GETS)
def test_head_answers_like_get_without_a_body(client: TestClient, path: str) -> None:
    get, head = client.get(path), client.head(path)
    assert head.status_code == get.status_code != 405
    assert head.content == b""
    for name in ("content-type", "etag"):
        assert head.headers.get(name) == get.headers.get(name)
    if path != "/metrics":  # the metrics change with every request
        assert head.headers["content-length"] == str(len(get.content))


def test_the_docs_page_loads_everything_from_this_server(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "//" not in page.text  # every URL is on this origin
    for asset, media_type in [("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")]:
        assert f'"/docs/assets/{asset}"' in page.text
        served = client.get(f"/docs/assets/{asset}")
        assert served.status_code == 200 and served.headers["content-type"].startswith(media_type)
        assert len(served.content) > 100_000
    assert client.get("/redoc").status_code == 404  # ReDoc loads a logo from a CDN: not offered


async def _post(app: FastAPI, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> list[Message]:
    """What the ASGI ``app`` sends for a POST with exactly these header bytes (no client rewrites them)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("length", [b"abc", b"\xb2", b"\xd9\xa2", b"-1", b"1.5", b""], ids=repr)
def test_a_malformed_content_length_is_a_400_problem(app: FastAPI, length: bytes) -> None:
    """A Content-Length that is not ASCII digits (``\\xb2`` is latin-1 for a superscript two) is refused.

    Tested on the ASGI app: uvicorn's HTTP parser refuses such a header with its own plain-text 400
    before the app sees the request.
    """
    headers = [(b"content-type", b"application/json"), (b"content-length", length)]
    sent = asyncio.run(_post(app, "/v1/edits", headers, b"{}"))
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    assert start["status"] == 400
    assert dict(start["headers"])[b"content-type"] == PROBLEM.encode()
    problem = json.loads(body)
    assert (problem["status"], problem["detail"]) == (400, "invalid Content-Length header")
