"""The web console in headless Chromium against the service on the embedded model.

One server for the module: the gateway over SQLite with the in-process queue and worker on the
embedded SmolLM2, as ``creme serve`` runs them, on a free loopback port. Every page is checked to
send no request off the machine and to log no console error; each leaves a screenshot in
``test-artifacts/browser/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import delete

from service.db import Job, Worker
from service.engine.inputs import EMBEDDED_MODEL
from service.keys import create_key, revoke_key
from tests.api.support import add_worker
from tests.browser.support import WatchedPage, screenshot
from tests.engine.helpers import failing_case
from tests.support.live import LiveService, live_service

try:
    from playwright.sync_api import Browser, Locator, Page, expect
except ImportError:  # the browser fixture skips, or fails under CI
    Browser = Locator = Page = object  # type: ignore[assignment,misc]

pytestmark = pytest.mark.slow

CASE = failing_case("mquake-2hop-0394")  # the embedded model knows both hops and fails the composition
EDIT_SECONDS = 240  # computing, evaluating and applying one edit on two busy CPU cores
ANALYSIS_SECONDS = 120
STEP_MS = 15_000


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """``creme serve`` on the embedded default: SQLite, in-process queue and worker, uvicorn on loopback."""
    with live_service(tmp_path_factory.mktemp("console")) as live:
        yield live


@pytest.fixture
def watched(browser: Browser) -> Iterator[WatchedPage]:
    """A page in a fresh context (its own session storage), checked for requests off the machine and errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(STEP_MS)
    expect.set_options(timeout=STEP_MS)
    page = WatchedPage(context.new_page())
    yield page
    context.close()


def open_view(watched: WatchedPage, service: LiveService, route: str) -> Page:
    page = watched.page
    page.goto(f"{service.url}/#/{route}")
    return page


def field(page: Page, label: str) -> Locator:
    """The form control labelled ``label`` (optional fields say so after it)."""
    return page.get_by_label(re.compile(rf"^{re.escape(label)}( \(optional\))?$"))


def bridge_and_answer_are_required(app: FastAPI) -> bool:
    """Whether the API still needs bridge and answer (until the worker infers them from the model)."""
    required = app.openapi()["components"]["schemas"]["EditCreate"].get("required", [])
    return "bridge" in required or "answer" in required


def test_pages_render_offline(watched: WatchedPage, service: LiveService) -> None:
    page = open_view(watched, service, "edits")
    expect(page.get_by_role("heading", name="Edits")).to_be_visible()
    expect(page.get_by_label("Search")).to_be_visible()
    expect(page.get_by_label("Status")).to_be_visible()
    screenshot(page, "console-edits")

    page.get_by_role("link", name="New edit", exact=True).first.click()
    expect(page.get_by_role("heading", name="New edit")).to_be_visible()
    for label in ("Prompt", "First-hop phrase", "Bridge entity", "Answer", "Layers", "Method", "Apply"):
        expect(field(page, label)).to_be_visible()
    screenshot(page, "console-new-edit")

    page.get_by_role("link", name="Model").click()
    expect(page.locator(".state-version")).to_have_text(re.compile(r"^\d+$"))
    workers = page.locator("table.workers tbody tr")
    expect(workers).to_have_count(1)
    expect(workers.first.locator(".badge.ok")).to_have_text("converged")
    screenshot(page, "console-model")

    assert f"{service.url}/console/js/main.js" in watched.requested
    watched.assert_clean()


def test_the_form_shows_what_the_service_refuses(watched: WatchedPage, service: LiveService) -> None:
    page = open_view(watched, service, "new")
    watched.expect_status(422)
    field(page, "Prompt").fill(CASE.compositional)
    field(page, "First-hop phrase").fill("the novel Misery")
    field(page, "Bridge entity").fill(CASE.bridge)
    field(page, "Answer").fill(CASE.answer)
    page.get_by_role("button", name="Compute edit").click()
    problem = page.locator(".problem")
    expect(problem).to_contain_text("422")
    expect(problem).to_contain_text("does not occur in the prompt")
    expect(page.locator("#edit-hop1_phrase-error")).to_contain_text("does not occur in the prompt")
    expect(field(page, "First-hop phrase")).to_have_attribute("aria-invalid", "true")

    field(page, "First-hop phrase").fill(CASE.hop1_phrase)
    field(page, "Layers").fill("10-x")
    page.get_by_role("button", name="Compute edit").click()
    expect(page.locator("#edit-layers-error")).to_contain_text('"10-x" is not a layer number')
    expect(page.locator("#edit-hop1_phrase-error")).to_be_empty()
    watched.assert_clean()


def test_an_edit_from_the_form_is_applied_reverted_and_analysed(
    browser: Browser, watched: WatchedPage, service: LiveService
) -> None:
    listing = WatchedPage(browser.new_page())  # a second tab on the list, which must follow the edit live
    listing.page.set_default_timeout(STEP_MS)
    listing.page.goto(f"{service.url}/#/edits")
    expect(listing.page.get_by_role("heading", name="Edits")).to_be_visible()

    page = open_view(watched, service, "new")
    field(page, "Prompt").fill(CASE.compositional)
    field(page, "First-hop phrase").fill(CASE.hop1_phrase)
    field(page, "Apply").select_option("always")
    if bridge_and_answer_are_required(service.app):
        # Until the worker infers them, the API refuses the request; the form must say so, field by field.
        watched.expect_status(422)
        page.get_by_role("button", name="Compute edit").click()
        expect(page.locator(".problem")).to_contain_text("Invalid request (422)")
        expect(page.locator("#edit-bridge-error")).not_to_be_empty()
        expect(page.locator("#edit-answer-error")).not_to_be_empty()
        screenshot(page, "console-new-edit-refused")
        field(page, "Bridge entity").fill(CASE.bridge)
        field(page, "Answer").fill(CASE.answer)
    page.get_by_role("button", name="Compute edit").click()
    expect(page.locator(".progress")).to_be_visible()
    page.wait_for_url(re.compile(r"#/edits/[0-9a-f-]+$"), timeout=EDIT_SECONDS * 1000)
    edit_id = page.url.rsplit("/", 1)[1]

    status = page.locator(".page-header .badge")
    expect(status).to_have_text("applied")
    expect(page.locator("section", has=page.get_by_role("heading", name="Request"))).to_contain_text(CASE.bridge)
    expect(page.locator("svg.bars").first).to_be_visible()
    layers = page.locator("section", has=page.get_by_role("heading", name="Layers"))
    expect(layers.locator("tbody tr")).to_have_count(11)  # the default band, 10-20
    expect(page.locator("table.texts tbody tr").first).to_be_visible()
    expect(page.locator("table.history tbody tr")).to_have_count(1)
    expect(page.get_by_role("link", name="Download delta")).to_have_attribute("href", f"v1/edits/{edit_id}/delta")
    expect(page.get_by_role("button", name="Figure (PNG)")).to_be_visible()
    screenshot(page, "console-edit-applied")
    with page.expect_download() as downloaded:
        page.get_by_role("link", name="Download delta").click()
    assert downloaded.value.suggested_filename == f"edit-{edit_id}.safetensors"
    assert Path(downloaded.value.path()).read_bytes()[8:9] == b"{"  # safetensors: u64 header size, JSON header
    expect(listing.page.locator(f'tr:has(a[href="#/edits/{edit_id}"]) [data-status]')).to_have_text("applied")
    screenshot(listing.page, "console-edits-live")

    page.get_by_role("link", name="Model").click()
    expect(page.locator(".state-version")).to_have_text("1")
    expect(page.locator(".active-edits li")).to_have_count(1)
    expect(page.locator(".active-edits a")).to_have_attribute("href", f"#/edits/{edit_id}")
    expect(page.locator("table.workers .badge.ok")).to_have_text("converged")
    screenshot(page, "console-model-active-edit")
    page.go_back()

    with page.expect_request(lambda request: request.url.endswith(f"/v1/edits/{edit_id}/revert")) as sent:
        page.get_by_role("button", name="Revert").click()
    assert sent.value.headers.get("if-match") == '"1"'
    expect(status).to_have_text("reverted")
    expect(page.locator(".notice")).to_contain_text("model state is now version 2")
    expect(page.locator("table.history tbody tr")).to_have_count(2)
    expect(page.get_by_role("button", name="Apply")).to_be_enabled()
    expect(listing.page.locator(f'tr:has(a[href="#/edits/{edit_id}"]) [data-status]')).to_have_text("reverted")
    screenshot(page, "console-edit-reverted")

    page.get_by_role("link", name="Logit lens").click()
    expect(field(page, "Prompt")).to_have_value(CASE.compositional)
    expect(field(page, "Targets")).to_have_value(f"{CASE.bridge}, {CASE.answer}")
    page.get_by_role("button", name="Run analysis").click()
    heatmap = page.locator("svg.heatmap")
    expect(heatmap).to_be_visible(timeout=ANALYSIS_SECONDS * 1000)
    expect(heatmap.locator("rect.cell")).to_have_count(30 * 2)
    heatmap.locator(f'rect.cell[data-row="20"][data-column="{CASE.answer}"]').hover()
    expect(page.locator(".readout").first).to_contain_text(re.compile(rf"layer 20, {CASE.answer}: p=\S+, rank \d+"))
    expect(page.locator("svg.heatmap .side-text")).to_have_count(30)
    screenshot(page, "console-lens-heatmap")
    with page.expect_download() as figure:  # the service's own figure, fetched with the page's key
        page.get_by_role("button", name="Figure (SVG)").click()
    assert re.fullmatch(r"logit-lens-[0-9a-f-]+\.svg", figure.value.suggested_filename)
    assert "<svg" in Path(figure.value.path()).read_text()
    page.get_by_role("link", name="← Back to the edit").click()
    expect(status).to_have_text("reverted")

    page.get_by_role("link", name="Model").click()
    expect(page.locator(".state-version")).to_have_text("2")
    expect(page.locator(".active-edits")).to_have_count(0)
    watched.assert_clean()
    listing.assert_clean()
    listing.page.close()


def test_locating_and_intervention_are_drawn(watched: WatchedPage, service: LiveService) -> None:
    page = open_view(watched, service, "analyses?kind=locate")
    field(page, "Prompt").fill(CASE.compositional)
    field(page, "First-hop phrase").fill(CASE.hop1_phrase)
    field(page, "Bridge entity").fill(CASE.bridge)
    field(page, "Answer").fill(CASE.answer)
    page.get_by_role("button", name="Run analysis").click()
    heatmap = page.locator("svg.heatmap")
    expect(heatmap).to_be_visible(timeout=ANALYSIS_SECONDS * 1000)
    expect(heatmap.locator("rect.cell")).to_have_count(30 * 3 * 2)
    expect(heatmap.locator(".band-label")).to_have_text("default edit band")
    heatmap.locator('rect.cell[data-row="14"][data-column="attn/last"]').hover()
    expect(page.locator(".readout").first).to_contain_text("layer 14, attention at the last token: p=")
    screenshot(page, "console-locate-heatmap")

    page.get_by_role("link", name="Analyses").click()
    field(page, "Analysis").select_option("intervention")
    field(page, "Prompt").fill(CASE.compositional)
    field(page, "Bridge entity").fill(CASE.bridge)
    field(page, "Answer").fill(CASE.answer)
    field(page, "Layers").fill("8-22")
    page.get_by_role("button", name="Run analysis").click()
    chart = page.locator("svg.lines")
    expect(chart).to_be_visible(timeout=ANALYSIS_SECONDS * 1000)
    expect(chart.locator("polyline")).to_have_count(3)
    expect(chart.locator("circle.dot")).to_have_count(3 * 15)
    screenshot(page, "console-intervention")
    watched.assert_clean()


def test_a_key_is_asked_for_on_401_and_sent_as_bearer(watched: WatchedPage, service: LiveService) -> None:
    with service.factory() as session:
        key, token = create_key(session, "console-test", ["read"])
    try:
        watched.expect_status(401)
        page = open_view(watched, service, "model")
        dialog = page.get_by_role("dialog", name="API key")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("an API key is required")
        screenshot(page, "console-key-prompt")
        dialog.get_by_label("Key").fill(token)
        with page.expect_request(lambda r: r.url.endswith("/v1/model") and "authorization" in r.headers) as sent:
            dialog.get_by_role("button", name="Use key").click()
        assert sent.value.headers["authorization"] == f"Bearer {token}"
        expect(page.locator(".state-version")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('creme.apiKey')") == token
    finally:
        with service.factory() as session:
            revoke_key(session, key.id)
    watched.assert_clean()


def test_a_model_is_chosen_when_several_are_served(watched: WatchedPage, service: LiveService) -> None:
    add_worker(service.factory, "w-other", version=0, base_model="/models/other", n_layers=4)  # a second model
    try:
        page = open_view(watched, service, "new")
        expect(field(page, "Model").locator("option")).to_have_text(
            [f"{EMBEDDED_MODEL} (30 layers)", "/models/other (4 layers)"]
        )
        screenshot(page, "console-two-models")
        page.get_by_role("link", name="Analyses").click()
        field(page, "Model").select_option(EMBEDDED_MODEL)
        field(page, "Prompt").fill(CASE.compositional)
        page.get_by_role("button", name="Run analysis").click()
        page.wait_for_url(re.compile(r".*#/analyses/[0-9a-f-]{36}.*"))
        job_id = re.search(r"#/analyses/([0-9a-f-]{36})", page.url).group(1)  # type: ignore[union-attr]
        with service.factory() as session:
            assert session.get(Job, job_id).base_model == EMBEDDED_MODEL  # type: ignore[union-attr]
        watched.assert_clean()
    finally:
        with service.factory() as session:
            session.execute(delete(Worker).where(Worker.id == "w-other"))
            session.commit()
