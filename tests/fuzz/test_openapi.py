"""Schemathesis against the app's own OpenAPI schema, on a real database and the in-process queue.

Every operation gets a bounded number of generated requests (the schema's examples, valid and
invalid data); each response must not be a 5xx, must use a declared status code and content
type, and must match the declared schema. Jobs are queued and never run (no worker).

Each operation is its own Hypothesis test over schemathesis' strategies (``APIOperation.as_strategy``):
schemathesis' pytest integration (``from_fixture(...).parametrize()``) fails on pytest 9.2
(``'Function' object has no attribute '_nodeid'``). ``CREME_FUZZ_EXAMPLES`` and ``CREME_FUZZ_SEED``
widen or vary the search.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import sessionmaker

from service.jobs import InProcessQueue
from tests.fixtures.app import build_app
from tests.fuzz.conftest import MAX_EXAMPLES, SEED, fuzz_settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _operations() -> list[tuple[str, str]]:
    queue = InProcessQueue()
    try:
        document: dict[str, Any] = build_app(fuzz_settings(), sessionmaker(), queue).openapi()
    finally:
        queue.close()
    return [(method.upper(), path) for path, item in document["paths"].items() for method in item]


OPERATIONS = _operations()


def _cases(schema: BaseSchema, method: str, path: str) -> st.SearchStrategy[Case]:
    operation = schema[path][method]
    strategies = [operation.as_strategy(GenerationMode.POSITIVE), *operation.get_strategies_from_examples()]
    has_inputs = any(True for _ in operation.iter_parameters()) or operation.body
    if has_inputs:
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    return st.one_of(strategies)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_conforms_to_schema(api_schema: BaseSchema, method: str, path: str) -> None:
    @seed(SEED)
    @given(case=_cases(api_schema, method, path))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: Case) -> None:
        statuses.append(case.call_and_validate(checks=CHECKS).status_code)

    statuses: list[int] = []
    check()
    # The generated and seeded inputs reach the operation itself, not only its validation.
    assert any(200 <= status < 300 for status in statuses), sorted(set(statuses))
