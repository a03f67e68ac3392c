"""Bearer keys on the HTTP API: 401/403 problems, scopes, the open no-key mode, actors, no leaked tokens."""

from __future__ import annotations

import logging
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from service.db import Edit, StateEvent
from service.jobs import InProcessQueue
from service.keys import revoke_key
from service.settings import Settings
from tests.api.support import EDIT_BODY, compute_edit, snapshot
from tests.security.support import MakeKey, bearer
from tests.support import assert_problem

SCORE_BODY = {"prompt": EDIT_BODY["prompt"], "answers": ["Tokyo"]}
LENS_BODY = {"prompt": EDIT_BODY["prompt"], "targets": ["Tokyo"]}
READS = ["/v1/edits", "/v1/jobs", "/v1/model"]
OPEN_PATHS = ["/healthz", "/metrics", "/openapi.json", "/docs"]


def _submit(client: TestClient, token: str | None = None) -> dict[str, str]:
    response = client.post("/v1/edits", json=EDIT_BODY, headers=bearer(token) if token else {})
    assert response.status_code == 202, response.text
    return {"edit": response.json()["id"], "job": response.json()["job"]["id"]}


def test_without_keys_the_api_is_open(client: TestClient, factory: sessionmaker[Session]) -> None:
    ids = _submit(client)
    for path in READS:
        assert client.get(path).status_code == 200
    with factory() as session:
        assert session.get(Edit, ids["edit"]).actor == "api"  # type: ignore[union-attr]


def test_once_a_key_exists_requests_without_it_are_401(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, make_key: MakeKey
) -> None:
    ids = _submit(client)
    make_key("admin")
    before = snapshot(factory, queue)
    for path in [*READS, f"/v1/edits/{ids['edit']}", f"/v1/jobs/{ids['job']}"]:
        problem = assert_problem(client.get(path), 401, "unauthorized")
        assert "Bearer" in problem["detail"]
    response = client.post("/v1/edits", json=EDIT_BODY)
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer realm="creme"'
    assert_problem(client.post(f"/v1/jobs/{ids['job']}/cancel"), 401)
    assert_problem(client.post("/v1/edits", json={"not": "valid"}), 401)  # no validation details before auth
    assert snapshot(factory, queue) == before


def _operations(app: FastAPI) -> list[tuple[str, str]]:
    """Every ``/v1`` operation of the API as (method, path), with ``x`` for each path parameter."""
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, item in app.openapi()["paths"].items()
        if path.startswith("/v1")
        for method in item
    ]


def test_the_key_is_checked_before_the_body_is_parsed(
    app: FastAPI, client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, make_key: MakeKey
) -> None:
    reader, editor = make_key("read"), make_key("edit")
    malformed, json_type = b'{"prompt": ', {"content-type": "application/json"}
    operations = _operations(app)
    assert ("POST", "/v1/edits") in operations and len(operations) > 10
    assert client.get("/v1/edits", headers=bearer(reader)).status_code == 200  # records the key's last use
    before = snapshot(factory, queue)
    for method, path in operations:
        problem = assert_problem(client.request(method, path, content=malformed, headers=json_type), 401)
        assert "errors" not in problem, (method, path)
        if method == "POST":
            refused = client.request(method, path, content=malformed, headers=json_type | bearer(reader))
            assert_problem(refused, 403, "insufficient-scope")
    head = client.head("/v1/edits")
    assert (head.status_code, head.content) == (401, b"")
    assert snapshot(factory, queue) == before
    parsed = client.post("/v1/edits", content=malformed, headers=json_type | bearer(editor))
    assert assert_problem(parsed, 422, "validation")["errors"][0]["type"] == "json_invalid"  # admitted, then parsed


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer creme_not-a-real-key",
        "Bearer not-even-the-format",
        "Bearer " + "creme_" + "x" * 1000,
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "",
    ],
)
def test_invalid_credentials_are_401(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, make_key: MakeKey, authorization: str
) -> None:
    make_key("admin")
    before = snapshot(factory, queue)
    response = client.post("/v1/edits", json=EDIT_BODY, headers={"Authorization": authorization})
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith('Bearer realm="creme"')
    if "creme_" in authorization:
        assert authorization.removeprefix("Bearer ") not in response.text
    assert snapshot(factory, queue) == before


def test_a_presented_bad_key_is_refused_even_while_the_api_is_open(client: TestClient) -> None:
    response = client.get("/v1/edits", headers=bearer("creme_forged"))
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer realm="creme", error="invalid_token"'
    assert client.get("/v1/edits").status_code == 200


def test_a_revoked_key_is_401_and_other_keys_still_work(
    client: TestClient, factory: sessionmaker[Session], make_key: MakeKey
) -> None:
    old, current = make_key("edit", name="old"), make_key("edit", name="current")
    assert client.get("/v1/edits", headers=bearer(old)).status_code == 200
    with factory() as session:
        revoke_key(session, old.removeprefix("creme_")[:8])
    problem = assert_problem(client.get("/v1/edits", headers=bearer(old)), 401, "unauthorized")
    assert "revoked" in problem["detail"]
    assert_problem(client.post("/v1/edits", json=EDIT_BODY, headers=bearer(old)), 401)
    assert client.get("/v1/edits", headers=bearer(current)).status_code == 200
    _submit(client, current)


def test_a_read_key_reads_but_may_not_change_anything(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, make_key: MakeKey
) -> None:
    ids = _submit(client)
    compute_edit(factory, ids["edit"])
    reader = make_key("read")
    for path in [*READS, f"/v1/edits/{ids['edit']}", f"/v1/jobs/{ids['job']}", f"/v1/edits/{ids['edit']}/delta"]:
        assert client.get(path, headers=bearer(reader)).status_code == 200, path
    before = snapshot(factory, queue)
    writes = [
        ("/v1/edits", EDIT_BODY),
        (f"/v1/edits/{ids['edit']}/apply", None),
        (f"/v1/edits/{ids['edit']}/revert", None),
        (f"/v1/jobs/{ids['job']}/cancel", None),
        ("/v1/score", SCORE_BODY),
        ("/v1/generate", {"prompt": "Hello"}),
        ("/v1/analyses/logit-lens", LENS_BODY),
    ]
    for path, body in writes:
        response = client.post(path, json=body, headers=bearer(reader))
        problem = assert_problem(response, 403, "insufficient-scope")
        assert problem["required_scope"] == "edit" and problem["key_scopes"] == ["read"]
        assert "'edit'" in problem["detail"]
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert snapshot(factory, queue) == before


@pytest.mark.parametrize("scope", ["edit", "admin"])
def test_edit_and_admin_keys_read_and_write(
    client: TestClient, factory: sessionmaker[Session], make_key: MakeKey, scope: str
) -> None:
    token = make_key(scope)
    ids = _submit(client, token)
    assert client.get(f"/v1/edits/{ids['edit']}", headers=bearer(token)).status_code == 200
    lens = client.post("/v1/analyses/logit-lens", json=LENS_BODY, headers=bearer(token))
    assert lens.status_code == 202
    assert client.post(f"/v1/jobs/{ids['job']}/cancel", headers=bearer(token)).status_code == 200
    compute_other = _submit(client, token)
    compute_edit(factory, compute_other["edit"])
    applied = client.post(f"/v1/edits/{compute_other['edit']}/apply", headers=bearer(token))
    assert applied.status_code == 200 and applied.json()["state"]["version"] == 1


def test_the_acting_key_is_recorded_on_edits_and_state_events(
    client: TestClient, factory: sessionmaker[Session], make_key: MakeKey
) -> None:
    token = make_key("edit")
    actor = "key:" + token.removeprefix("creme_")[:8]
    ids = _submit(client, token)
    compute_edit(factory, ids["edit"])
    assert client.post(f"/v1/edits/{ids['edit']}/apply", headers=bearer(token)).status_code == 200
    assert client.post(f"/v1/edits/{ids['edit']}/revert", headers=bearer(token)).status_code == 200
    with factory() as session:
        assert session.get(Edit, ids["edit"]).actor == actor  # type: ignore[union-attr]
        events = session.scalars(select(StateEvent).order_by(StateEvent.version)).all()
        assert [(e.action, e.actor) for e in events] == [("apply", actor), ("revert", actor)]
        assert all(token not in str(e.actor) for e in events)


@pytest.mark.parametrize("path", OPEN_PATHS)
def test_health_metrics_and_docs_stay_open(client: TestClient, make_key: MakeKey, path: str) -> None:
    make_key("admin")
    assert client.get(path).status_code == 200


def test_readyz_stays_open(client: TestClient, make_key: MakeKey) -> None:
    make_key("admin")
    assert client.get("/readyz").status_code == 503  # no worker: not ready, but not 401
    assert client.get("/readyz").json()["status"] == 503


def test_require_auth_closes_the_api_even_without_keys(
    settings: Settings, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    app = create_app(settings.model_copy(update={"require_auth": True}), session_factory=factory, queue=queue)
    with TestClient(app) as client:
        assert_problem(client.get("/v1/edits"), 401, "unauthorized")
        assert_problem(client.post("/v1/edits", json=EDIT_BODY), 401, "unauthorized")
        assert client.get("/healthz").status_code == 200


def test_require_auth_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREME_REQUIRE_AUTH", "true")
    assert Settings().require_auth is True
    monkeypatch.delenv("CREME_REQUIRE_AUTH")
    assert Settings().require_auth is False


def test_tokens_are_never_logged(
    client: TestClient, make_key: MakeKey, caplog: pytest.LogCaptureFixture, factory: sessionmaker[Session]
) -> None:
    token = make_key("edit")
    forged = "creme_forged-secret-value"
    with caplog.at_level(logging.DEBUG):
        _submit(client, token)
        client.get("/v1/edits", headers=bearer(token))
        client.get("/v1/edits", headers=bearer(forged))
        client.post("/v1/edits", json={"bad": 1}, headers=bearer(token))
    assert caplog.records  # something was logged at DEBUG (httpx, sqlalchemy, ...)
    assert token not in caplog.text and token.removeprefix("creme_") not in caplog.text
    assert forged not in caplog.text


def test_openapi_declares_bearer_auth_on_v1_only(app: FastAPI) -> None:
    spec = app.openapi()
    schemes = spec["components"]["securitySchemes"]
    assert list(schemes) == ["HTTPBearer"]
    assert (schemes["HTTPBearer"]["type"], schemes["HTTPBearer"]["scheme"]) == ("http", "bearer")
    post_edits = spec["paths"]["/v1/edits"]["post"]
    assert post_edits["security"] == [{"HTTPBearer": []}]
    assert {"401", "403", "429"} <= set(post_edits["responses"])
    assert "security" not in spec["paths"]["/healthz"]["get"]
