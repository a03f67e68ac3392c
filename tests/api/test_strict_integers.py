"""Integers in request bodies are strict: a boolean, a float such as 1.0 or a numeric string is a 422."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.routers import analyses, edits, health, jobs, model, query
from service.jobs import InProcessQueue
from tests.api.support import EDIT_BODY, snapshot
from tests.support import assert_problem

LENS = {"prompt": EDIT_BODY["prompt"]}
LOCATE = {k: EDIT_BODY[k] for k in ("prompt", "hop1_phrase", "bridge", "answer")}
INTERVENTION = {"prompt": EDIT_BODY["prompt"], "bridge": "Japan", "answer": "Tokyo"}

# (path, body with the integer ``v``, where the error must point)
Body = Callable[[Any], dict[str, Any]]
INTEGER_FIELDS: list[tuple[str, Body, list[str | int]]] = [
    ("/v1/edits", lambda v: {**EDIT_BODY, "layers": [v]}, ["body", "layers", 0]),
    ("/v1/analyses/intervention", lambda v: {**INTERVENTION, "layers": [4, v]}, ["body", "layers", 1]),
    ("/v1/analyses/logit-lens", lambda v: {**LENS, "top_k": v}, ["body", "top_k"]),
    ("/v1/analyses/locate", lambda v: {**LOCATE, "window": v}, ["body", "window"]),
    ("/v1/generate", lambda v: {"prompt": "Hello", "max_new_tokens": v}, ["body", "max_new_tokens"]),
]
NOT_INTEGERS = [True, 1.0, "1"]


@pytest.mark.parametrize("value", NOT_INTEGERS, ids=repr)
@pytest.mark.parametrize(("path", "body", "loc"), INTEGER_FIELDS, ids=[p for p, _, _ in INTEGER_FIELDS])
def test_a_boolean_float_or_string_is_not_an_integer(
    client: TestClient,
    factory: sessionmaker[Session],
    queue: InProcessQueue,
    path: str,
    body: Body,
    loc: list[str | int],
    value: Any,
) -> None:
    assert client.post(path, json=body(2), headers={"Prefer": "wait=0"}).status_code in (200, 202)  # 2 is fine
    before = snapshot(factory, queue)
    problem = assert_problem(client.post(path, json=body(value)), 422, "validation")
    assert [(e["loc"], e["type"]) for e in problem["errors"]] == [(loc, "int_type")]
    assert problem["detail"] == f"{'.'.join(map(str, loc))}: Input should be a valid integer"
    assert snapshot(factory, queue) == before


def _lax_integers(schema: Any) -> Iterator[dict[str, Any]]:
    """Every integer in a pydantic core schema that is not strict."""
    if isinstance(schema, dict):
        if schema.get("type") == "int" and not schema.get("strict"):
            yield schema
        for value in schema.values():
            yield from _lax_integers(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _lax_integers(item)


def test_every_integer_of_every_request_body_is_strict(app: FastAPI) -> None:
    routers = (analyses.router, edits.router, health.router, jobs.router, model.router, query.router)
    bodies = {
        (route.path, method): route.body_field.field_info.annotation
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and route.body_field is not None
        for method in route.methods
    }
    documented = {
        (path, method.upper())
        for path, item in app.openapi()["paths"].items()
        for method, operation in item.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    }
    assert set(bodies) == documented  # every JSON body the API takes is checked here (a delta import is bytes)
    lax = {str(body): list(_lax_integers(body.__pydantic_core_schema__)) for body in bodies.values()}
    assert {body: found for body, found in lax.items() if found} == {}
    assert list(_lax_integers({"type": "int", "ge": 1})) == [{"type": "int", "ge": 1}]  # the walk finds them
