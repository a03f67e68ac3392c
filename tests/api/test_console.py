"""The web console's routes: ``/`` and ``/console/*`` serve it without touching the API or its schema.

The browser tests (tests/browser/test_console.py) drive the console itself.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.console.router import STATIC
from service.engine.inputs import default_band
from service.keys import create_key, revoke_key
from tests.fixtures.app import N_LAYERS

IMPORT = re.compile(r"""(?:import|from)\s*(?:[^"';]*?\bfrom\s*)?["'](\.{1,2}/[^"']+)["']""")


def test_the_page_is_served_at_the_root_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="console/js/main.js"></script>' in page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), "no inline script"
    assert not re.search(r"\sstyle=|<style", page.text), "no inline style"
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text), "no asset from another origin"

    head = client.head("/")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == page.headers["content-type"]


def test_assets_are_served_with_the_same_headers(client: TestClient) -> None:
    for path, kind in (
        ("/console/js/main.js", "javascript"),
        ("/console/console.css", "text/css"),
        ("/console/favicon.svg", "image/svg+xml"),
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert kind in response.headers["content-type"]
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert client.head(path).status_code == 200
    assert client.get("/console/js/nothing.js").status_code == 404


def test_every_module_import_resolves_to_a_shipped_file() -> None:
    modules = sorted(STATIC.rglob("*.js"))
    assert len(modules) > 10
    for module in modules:
        for target in IMPORT.findall(module.read_text()):
            assert (module.parent / target).resolve().is_file(), f"{module.relative_to(STATIC)} imports {target}"
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", module.read_text()), f"{module} names a URL"


def test_the_console_is_outside_the_schema_and_the_api_is_unchanged(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not [p for p in paths if p.startswith("/console")]
    assert "/v1/edits" in paths
    for path in ("/docs", "/healthz", "/v1/edits", "/v1/model"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "content-security-policy" not in response.headers, path  # only the console's own pages
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200


def test_the_config_names_the_default_band_and_needs_a_key_once_keys_exist(
    client: TestClient, factory: sessionmaker[Session]
) -> None:
    config = client.get("/console/config.json")
    assert config.status_code == 200
    model = config.json()["model"]
    assert config.json() == {"model": model, "n_layers": N_LAYERS, "default_band": default_band(model, N_LAYERS)}

    with factory() as session:
        key, token = create_key(session, "console", ["read"])
    try:
        refused = client.get("/console/config.json")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/").status_code == 200  # the page itself stays open, like /docs
        allowed = client.get("/console/config.json", headers={"Authorization": f"Bearer {token}"})
        assert allowed.status_code == 200
    finally:
        with factory() as session:
            revoke_key(session, key.id)


def test_static_files_ship_as_package_data() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    globs = re.search(r'"api\.console" = \[(.*?)\]', pyproject)
    assert globs is not None, "pyproject.toml lists no package data for api.console"
    patterns = [g.strip().strip('"') for g in globs.group(1).split(",")]
    shipped = {p for pattern in patterns for p in STATIC.parent.glob(pattern)}
    assert {p for p in STATIC.rglob("*") if p.is_file()} <= shipped
