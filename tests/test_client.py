"""The Python client (``creme.client``) against the real service: uvicorn on a loopback port, the app on
SQLite with an in-process worker on the embedded SmolLM2, and API keys active (one per scope)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from safetensors.torch import load as load_safetensors

from creme.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    Edit,
    Forbidden,
    Invalid,
    Job,
    NotFound,
    PreconditionFailed,
    Unauthorized,
    WaitTimeout,
)
from tests.e2e.support import free_port
from tests.support.live import LiveService, live_service

pytestmark = pytest.mark.slow

PROMPT = "The capital of the country that Daisuke Sasaki is a citizen of is"
HOP1 = "the country that Daisuke Sasaki is a citizen of"
LAYERS = [12, 13, 14]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """``creme serve`` as it runs embedded, in this process: one app for the whole module, keys for edit and read."""
    with live_service(tmp_path_factory.mktemp("client"), key_scopes=("edit", "read")) as live:
        yield live


@pytest.fixture(scope="module")
def client(service: LiveService) -> Iterator[Client]:
    with Client(service.url, api_key=service.keys["edit"]) as c:
        yield c


@pytest.fixture(scope="module")
def submitted(client: Client) -> Edit:
    """The module's first edit, as submitted (without waiting): to be applied once computed."""
    return client.edit(PROMPT, HOP1, "Japan", "Tokyo", layers=LAYERS, method="creme", apply="always")


@pytest.fixture(scope="module")
def computed(client: Client, submitted: Edit) -> Edit:
    """A second, later edit, computed but not applied, submitted with ``wait`` (``Prefer: wait``)."""
    return client.edit(PROMPT, HOP1, "Japan", "Tokyo", layers=[13], method="creme", apply="never", wait=240)


def test_edit_wait_revert_and_apply_with_if_match(client: Client, submitted: Edit) -> None:
    assert submitted.status in ("pending", "computing") and submitted.job_id and submitted.prompt == PROMPT
    with pytest.raises(WaitTimeout):  # the edit takes seconds
        client.wait(submitted, timeout=0.2)
    with pytest.raises(WaitTimeout) as queued:  # queued behind the edit: 202 after 1 s, then polled
        client.lens("The capital of Japan is", ["Tokyo"], wait=1)

    edit = client.wait(submitted, timeout=300)
    assert isinstance(edit, Edit) and edit.id == submitted.id
    assert edit.status == "applied", edit.error
    assert edit.layers == LAYERS and edit.method == "creme" and edit.bridge == "Japan"
    assert edit.metrics["correction"]["p_post_mean"] > edit.metrics["correction"]["p_pre_mean"]
    assert edit.created_at is not None and edit.applied_at is not None
    assert [e.action for e in edit.history] == ["apply"]
    assert edit.raw["id"] == edit.id  # the server's object, unknown fields included
    job = client.wait(client.job(edit.job_id))
    assert isinstance(job, Job) and job.done and job.result["applied"] is True
    lens_job = client.wait(client.job(queued.value.problem["job_id"]), timeout=120)
    assert lens_job.kind == "logit-lens" and lens_job.status == "succeeded"

    version = client.model().state_version
    assert client.model().active_edits == [edit.id]
    reverted = client.revert(edit.id, if_match=version)
    assert reverted.version == version + 1 and reverted.active_edits == []
    assert reverted.edit.status == "reverted"
    with pytest.raises(Conflict) as conflict:
        client.revert(edit.id)
    assert conflict.value.status == 409

    with pytest.raises(PreconditionFailed) as stale:
        client.apply(edit.id, if_match=version)
    assert stale.value.status == 412 and stale.value.current_version == version + 1
    assert client.model().active_edits == []  # a refused request changes nothing

    applied_again = client.apply(edit.id, if_match=reverted.version, idempotency_key="client-reapply")
    assert applied_again.version == version + 2 and applied_again.active_edits == [edit.id]
    assert [e.action for e in applied_again.edit.history] == ["apply", "revert", "apply"]
    replay = client.apply(edit.id, if_match=reverted.version, idempotency_key="client-reapply")
    assert replay.version == version + 2

    tensors = load_safetensors(client.delta(edit.id))
    assert tensors and all(t.isfinite().all() for t in tensors.values())
    generation = client.generate(PROMPT, max_new_tokens=4)
    assert generation.text and generation.job_id


def test_edit_with_wait_and_the_listing_across_pages(client: Client, submitted: Edit, computed: Edit) -> None:
    assert computed.status == "computed" and computed.layers == [13], computed.error

    every = list(client.edits())
    assert [e.id for e in every] == [computed.id, submitted.id]  # newest first
    assert [e.id for e in client.edits(page_size=1)] == [e.id for e in every]  # one page per edit
    assert [e.id for e in client.edits(limit=1, page_size=1)] == [computed.id]
    assert [e.id for e in client.edits(status="computed")] == [computed.id]
    assert client.edit_by_id(computed.id) == computed


def test_problems_are_raised_as_typed_errors(client: Client, service: LiveService) -> None:
    with pytest.raises(NotFound) as missing:
        client.edit_by_id("no-such-edit")
    assert missing.value.status == 404 and missing.value.type.endswith("/not-found")
    assert missing.value.problem["status"] == 404

    with pytest.raises(Invalid) as invalid:
        client.edit(PROMPT, "the city of Osaka", "Japan", "Tokyo")
    assert [e["loc"] for e in invalid.value.errors] == [["body", "hop1_phrase"]]

    with Client(service.url) as anonymous, pytest.raises(Unauthorized) as unauthorized:
        anonymous.model()
    assert unauthorized.value.status == 401
    with Client(service.url, api_key="creme_not-a-key") as wrong, pytest.raises(Unauthorized):
        wrong.model()

    with Client(service.url, api_key=service.keys["read"]) as reader:
        assert reader.model().base_model
        with pytest.raises(Forbidden) as forbidden:
            reader.edit(PROMPT, HOP1, "Japan", "Tokyo")
    assert forbidden.value.status == 403 and "edit" in str(forbidden.value)

    with Client(f"http://127.0.0.1:{free_port()}", timeout=5) as nowhere, pytest.raises(ConnectionFailed) as down:
        nowhere.model()
    assert "cannot reach the service" in str(down.value) and "/v1/model" in str(down.value)


def test_async_client_lens_and_reads(service: LiveService) -> None:
    async def scenario() -> None:
        async with AsyncClient(service.url, api_key=service.keys["edit"]) as client:
            lens = await client.lens("The capital of Japan is", ["Tokyo"], top_k=3)
            assert [layer.layer for layer in lens.layers] == list(range(30))
            assert all(len(layer.top) == 3 for layer in lens.layers)
            last = lens.layers[-1].targets[0]
            assert last.target == "Tokyo" and last.rank >= 1 and 0 < last.prob <= 1
            job = await client.wait(await client.job(lens.job_id))
            assert job.status == "succeeded" and job.kind == "logit-lens"
            located = await client.locate(PROMPT, HOP1, "Japan", "Tokyo", window=2)
            assert located.layers == list(range(30)) and located.kinds and located.positions
            assert len(located.table) == 30 and 0 <= located.baseline <= 1

            model = await client.model()
            assert [w.alive for w in model.workers] == [True]
            listed = [edit async for edit in client.edits(page_size=1)]
            assert listed and listed[0] == await client.edit_by_id(listed[0].id)
            with pytest.raises(NotFound):
                await client.edit_by_id("no-such-edit")

    asyncio.run(scenario())
