"""Serve the console: ``/`` (the page), ``/console/*`` (its ES modules, styles, icon), ``/console/config.json``.

Everything ships in this package and nothing is fetched from elsewhere, so the console works with
the network unplugged. None of these routes is in the OpenAPI schema. The console's responses carry
a strict Content-Security-Policy (scripts, styles and requests from this origin only, no inline
script or style) and the usual hardening headers; the API routes are unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from api.auth import authorize
from api.deps import get_limits
from service.engine.inputs import default_band

STATIC = Path(__file__).parent / "static"
ASSETS_URL = "/console"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


class ConsoleAssets(StaticFiles):
    """The console's static files, each answered with :data:`SECURITY_HEADERS`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await super().__call__(scope, receive, send_secured)


def install_console(app: FastAPI) -> None:
    """Add the console to ``app``: ``GET /`` and the assets under :data:`ASSETS_URL`."""

    @app.get("/", include_in_schema=False)
    def console_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=SECURITY_HEADERS)

    @app.get(f"{ASSETS_URL}/config.json", include_in_schema=False)
    async def console_config(request: Request) -> JSONResponse:
        """What the console cannot learn from ``/v1``: the model's default edit band (null while unknown).

        Guarded like a ``/v1`` GET: it names the model.
        """
        await authorize(request)
        limits = await run_in_threadpool(get_limits, request)
        band = default_band(limits.model, limits.n_layers) if limits.n_layers else None
        body = {"model": limits.model, "n_layers": limits.n_layers, "default_band": band}
        return JSONResponse(body, headers=SECURITY_HEADERS)

    app.mount(ASSETS_URL, ConsoleAssets(directory=STATIC), name="console-assets")
