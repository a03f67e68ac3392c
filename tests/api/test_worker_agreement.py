"""The gateway refuses what a worker would refuse (issue 8): the hop-1 phrase as the engine finds it,
layers the model lacks, texts and edits too long in the model's tokens, and NUL characters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from service.db import utcnow
from service.engine.creme import CompositionalQuery
from service.engine.inputs import EMBEDDED_MODEL, check_layers
from service.engine.loading import load_tokenizer
from service.jobs import InProcessQueue
from service.settings import Settings
from service.usecases.pagination import encode_cursor
from service.usecases.validation import contains_nul
from tests.api.support import EDIT_BODY, add_worker, snapshot
from tests.fixtures.app import build_app
from tests.fixtures.models import cache_dir
from tests.support import assert_problem

SAMPLE_CASES = Path(__file__).parents[1] / "data" / "mquake_sample.jsonl"
HORMUZ = {
    "prompt": "The capital of the country north of the Straße of Hormuz is",
    "bridge": "Iran",
    "answer": "Tehran",
}
LOCATE_FIELDS = ("prompt", "hop1_phrase", "bridge", "answer")


def _engine_accepts(body: dict[str, Any]) -> bool:
    """Whether the worker's engine takes the query (edits and locating both build this first)."""
    try:
        CompositionalQuery(body["prompt"], body["hop1_phrase"], body["bridge"])
    except ValueError:
        return False
    return True


PHRASES = [
    ("the country north of the STRASSE of Hormuz", False),  # equal only under full case folding
    ("the country north of the STRAẞE of hormuz", True),  # capital sharp s: equal case by case
    ("THE COUNTRY north of the straße OF HORMUZ", True),
]


@pytest.mark.parametrize(("phrase", "found"), PHRASES, ids=[p for p, _ in PHRASES])
def test_the_gateway_finds_the_hop1_phrase_as_the_engine_does(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, phrase: str, found: bool
) -> None:
    body = {**HORMUZ, "hop1_phrase": phrase}
    assert _engine_accepts(body) is found
    for path, request in (
        ("/v1/edits", body),
        ("/v1/analyses/locate", {name: body[name] for name in LOCATE_FIELDS}),
    ):
        before = snapshot(factory, queue)
        response = client.post(path, json=request)
        if found:
            assert response.status_code == 202, response.text
        else:
            problem = assert_problem(response, 422, "validation")
            assert [e["type"] for e in problem["errors"]] == ["hop1_not_in_prompt"]
            assert snapshot(factory, queue) == before


def test_a_layer_beyond_the_loaded_model_is_refused_with_its_real_depth(client: TestClient) -> None:
    problem = assert_problem(client.post("/v1/edits", json={**EDIT_BODY, "layers": [4, 1024]}), 422, "validation")
    [error] = problem["errors"]
    assert error["loc"] == ["body", "layers", 1]
    assert error["msg"] == "layer 1024 is outside 0..29: the model has 30 layers"
    with pytest.raises(ValueError) as refused:  # the worker's engine says the same
        check_layers([4, 1024], 30)
    assert str(refused.value) == error["msg"]


def test_a_template_the_engine_cannot_fill_is_refused(client: TestClient) -> None:
    body = {**EDIT_BODY, "templates": ["{}", "Q: {x} {}"]}  # str.format would need x: the worker failed it
    problem = assert_problem(client.post("/v1/edits", json=body), 422, "validation")
    assert [(e["loc"], e["type"]) for e in problem["errors"]] == [(["body", "templates", 1], "template_placeholder")]


@pytest.fixture
def gateway(settings: Settings, factory: sessionmaker[Session], queue: InProcessQueue) -> Iterator[TestClient]:
    """The gateway of the distributed mode: no model in this process, so it does not know the depth."""
    with TestClient(create_app(settings, session_factory=factory, queue=queue)) as client:
        yield client


def test_in_distributed_mode_layers_are_bounded_by_the_depth_live_workers_registered(
    gateway: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    edit = {**EDIT_BODY, "layers": [500]}
    intervention = {"prompt": EDIT_BODY["prompt"], "bridge": "Japan", "answer": "Tokyo", "layers": [999]}
    # No live worker: the depth is unknown, so the jobs are accepted and wait for one.
    assert gateway.post("/v1/edits", json=edit).status_code == 202
    stale = utcnow() - timedelta(seconds=60)  # beyond the 30 s lease
    add_worker(factory, "w-dead", version=0, heartbeat=stale, n_layers=1000)
    assert gateway.post("/v1/analyses/intervention", json=intervention).status_code == 202

    add_worker(factory, "w-live", version=0, n_layers=30)
    before = snapshot(factory, queue)
    for path, body, layer in (("/v1/edits", edit, 500), ("/v1/analyses/intervention", intervention, 999)):
        problem = assert_problem(gateway.post(path, json=body), 422, "validation")
        assert [e["msg"] for e in problem["errors"]] == [f"layer {layer} is outside 0..29: the model has 30 layers"]
    assert snapshot(factory, queue) == before
    assert gateway.post("/v1/edits", json={**EDIT_BODY, "layers": [29]}).status_code == 202


@pytest.fixture
def roomy(settings: Settings, factory: sessionmaker[Session], queue: InProcessQueue) -> Iterator[TestClient]:
    """The app with the default text, body and query limits (the model has 30 layers)."""
    defaults = Settings(model=settings.model, max_wait_seconds=settings.max_wait_seconds)
    with TestClient(build_app(defaults, factory, queue)) as client:
        yield client


EMOJI = "\N{GRINNING FACE}" * 2000  # 2,000 characters, 6,000 tokens
TOO_MANY_TOKENS: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/generate", {"prompt": EMOJI, "max_new_tokens": 1}, "prompt"),
    ("/v1/score", {"prompt": EDIT_BODY["prompt"], "answers": [EMOJI]}, "answers"),
    ("/v1/analyses/logit-lens", {"prompt": EMOJI}, "prompt"),
    ("/v1/edits", {**EDIT_BODY, "paraphrases": [EMOJI]}, "paraphrases"),
    ("/v1/edits", {**EDIT_BODY, "prompt": EMOJI[:400] + EDIT_BODY["prompt"], "layers": [20]}, "prompt"),
]


@pytest.mark.parametrize(("path", "body", "field"), TOO_MANY_TOKENS, ids=[f"{p}-{f}" for p, _, f in TOO_MANY_TOKENS])
def test_texts_are_limited_in_the_models_tokens(
    roomy: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, path: str, body: Any, field: str
) -> None:
    before = snapshot(factory, queue)
    problem = assert_problem(roomy.post(path, json=body), 422, "validation")
    [error] = problem["errors"]
    assert field in error["loc"] and error["type"] == "string_too_many_tokens"
    tokens = 1212 if field == "prompt" and path == "/v1/edits" else 6000
    assert error["msg"] == f"has {tokens} tokens; the limit is 256 tokens (CREME_MAX_PROMPT_TOKENS)"
    assert snapshot(factory, queue) == before


def test_an_edit_is_limited_by_tokens_times_templates_times_layers(
    roomy: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    prompt = "The Rhine flows north through six countries before it reaches the sea. " * 6 + EDIT_BODY["prompt"]
    body = {**EDIT_BODY, "prompt": prompt}
    before = snapshot(factory, queue)
    problem = assert_problem(roomy.post("/v1/edits", json=body), 422, "validation")
    [error] = problem["errors"]
    assert error["loc"] == ["body"] and error["type"] == "edit_too_costly"
    # auto on the embedded model: its 12 English templates and the wider band it may fall back to
    assert " x 12 templates x 19 layers); the limit is 20000 (CREME_MAX_EDIT_COST)" in error["msg"]
    published = assert_problem(roomy.post("/v1/edits", json={**body, "method": "creme"}), 422, "validation")
    assert " x 22 templates x 11 layers)" in published["errors"][0]["msg"]  # the default band
    assert snapshot(factory, queue) == before
    assert roomy.post("/v1/edits", json={**body, "layers": [12, 13]}).status_code == 202  # 2 layers, not 11


def test_the_default_limits_accept_the_dataset_cases(roomy: TestClient) -> None:
    cases = [json.loads(line) for line in SAMPLE_CASES.read_text().splitlines() if line.strip()]
    for case in cases:
        body = {
            "prompt": case["compositional"],
            "hop1_phrase": case["hop1_phrase"],
            "bridge": case["bridge"],
            "answer": case["answer"],
            "paraphrases": case["questions"],
            "specificity": [{"prompt": p["cloze"], "answer": p["answer"]} for p in case["specificity"]],
        }
        assert roomy.post("/v1/edits", json=body).status_code == 202, case["id"]
    assert roomy.post("/v1/analyses/compositionality", json={"cases": cases}).status_code == 202


def test_a_tokenizer_the_gateway_cannot_load_is_503_and_changes_nothing(
    settings: Settings, factory: sessionmaker[Session], queue: InProcessQueue, tmp_path: Path
) -> None:
    missing = settings.model_copy(update={"model": str(tmp_path / "no-model")})
    before = snapshot(factory, queue)
    with TestClient(create_app(missing, session_factory=factory, queue=queue)) as client:
        response = client.post("/v1/generate", json={"prompt": "Hello"})
    problem = assert_problem(response, 503, "tokenizer-unavailable")
    assert "CREME_MODEL" in problem["detail"] and response.headers["retry-after"]
    assert snapshot(factory, queue) == before


def test_the_gateway_tokenizer_counts_as_the_workers_model(tmp_path: Path) -> None:
    """Before the embedded model is converted the tokenizer comes from its GGUF file, and converts nothing."""
    from_gguf = load_tokenizer(EMBEDDED_MODEL, cache_dir=tmp_path)
    converted = load_tokenizer(EMBEDDED_MODEL, cache_dir=cache_dir())
    assert list(tmp_path.iterdir()) == []
    for text in (EMOJI[:10], HORMUZ["prompt"], "用户：你好，世界。", " Tokyo"):
        assert from_gguf(text)["input_ids"] == converted(text)["input_ids"]
    assert (from_gguf.padding_side, from_gguf.pad_token) == ("left", converted.pad_token)


NUL_REQUESTS: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("post", "/v1/edits", {**EDIT_BODY, "templates": ["{}\x00"]}, 422),
    ("post", "/v1/edits", {**EDIT_BODY, "bridge_aliases": ["Nippon\x00"]}, 422),
    ("post", "/v1/analyses/logit-lens", {"prompt": "a", "targets": ["b\x00"]}, 422),
    ("get", "/v1/jobs/a%00b", None, 404),
    ("get", "/v1/edits/a%00b", None, 404),
    ("get", "/v1/jobs?cursor=" + encode_cursor(datetime(2026, 1, 1, tzinfo=UTC), "a\x00b"), None, 422),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), NUL_REQUESTS)
def test_one_nul_guard_refuses_nul_wherever_text_is_stored(
    client: TestClient,
    factory: sessionmaker[Session],
    queue: InProcessQueue,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
) -> None:
    assert contains_nul("a\x00b") and not contains_nul("ab")
    before = snapshot(factory, queue)
    response = client.post(path, json=body) if method == "post" else client.get(path)
    problem = assert_problem(response, status)
    if method == "post":
        assert [e["msg"] for e in problem["errors"]] == ["must not contain NUL characters"]
    assert snapshot(factory, queue) == before
