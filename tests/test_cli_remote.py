"""``creme edits ...`` and ``creme patch`` (``main()`` with argv) against a real service on a loopback port.

The service runs in this process as ``creme serve`` runs it embedded (tests/support/live.py), with an
edit key that the commands read from ``CREME_API_KEY``, as they read the URL from ``CREME_URL``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cli.main import main
from creme._ops import Call
from creme.client import Client
from service.engine.inputs import EMBEDDED_MODEL
from tests.fixtures.cli import Creme
from tests.support.live import LiveService, live_service

pytestmark = pytest.mark.slow

PROMPT = "The capital of the country that Daisuke Sasaki is a citizen of is"
HOP1 = "the country that Daisuke Sasaki is a citizen of"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with live_service(tmp_path_factory.mktemp("cli-remote"), key_scopes=("edit",)) as live:
        yield live


@pytest.fixture(autouse=True)
def remote(service: LiveService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREME_URL", service.url)
    monkeypatch.setenv("CREME_API_KEY", service.keys["edit"])


def field(out: str, name: str) -> str:
    """The value of line ``name`` of an edit's view."""
    return next(line.split(maxsplit=1)[1] for line in out.splitlines() if line.startswith(f"{name} "))


def state_version(service: LiveService) -> int:
    with Client(service.url, api_key=service.keys["edit"]) as client:
        return client.model().state_version


def test_patch_then_list_show_revert_and_apply(creme: Creme, service: LiveService) -> None:
    code, out, err = creme(
        "patch", PROMPT, "--hop1", HOP1, "--bridge", "Japan", "--answer", "Tokyo",
        "--layers", "12-14", "--method", "creme", "--apply", "always", "--wait", "300",
    )  # fmt: skip
    assert code == 0, err
    edit_id = field(out, "edit")
    assert f"submitted edit {edit_id}" in err and "succeeded: " in err  # the job's progress, to its end
    assert field(out, "status") == "applied" and field(out, "bridge") == "Japan" and field(out, "answer") == "Tokyo"
    assert field(out, "layers").startswith("12-14; method creme; apply always")
    assert field(out, "p(answer)").endswith("on the prompt") and "correction" in out and "safety" in out

    code, out, _ = creme("edits", "list")
    header, row = out.splitlines()
    assert header.split()[:3] == ["id", "status", "created"]
    assert row.split()[:2] == [edit_id, "applied"] and row.endswith("→ Tokyo")
    assert creme("edits", "list", "--status", "reverted")[1] == "no edits reverted\n"
    listed = json.loads(creme("edits", "list", "--json", "--limit", "1")[1])
    assert [item["id"] for item in listed] == [edit_id]

    code, out, _ = creme("edits", "show", edit_id)
    assert code == 0 and field(out, "edit") == edit_id and field(out, "history").split()[2:4] == ["apply", "by"]
    assert json.loads(creme("edits", "show", edit_id, "--json")[1])["status"] == "applied"

    version = state_version(service)
    code, out, err = creme("edits", "revert", edit_id, "--if-match", str(version - 1))
    assert code == 1 and not out
    assert err.startswith("creme edits revert: 412 ") and err.count("\n") == 1
    assert state_version(service) == version  # a refused request changes nothing

    code, out, _ = creme("edits", "revert", edit_id, "--if-match", str(version))
    assert code == 0 and out == f"{edit_id} reverted; model state version {version + 1}; active edits: none\n"
    code, out, _ = creme("edits", "apply", edit_id)
    assert code == 0 and out == f"{edit_id} applied; model state version {version + 2}; active edits: {edit_id}\n"


def test_problems_are_one_line_and_exit_1(creme: Creme, service: LiveService, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = creme("edits", "show", "no-such-edit")
    assert code == 1 and not out and err.startswith("creme edits show: 404 ") and err.count("\n") == 1
    code, _, err = creme("edits", "apply", "no-such-edit", "--url", service.url)
    assert code == 1 and err.startswith("creme edits apply: 404 ")
    monkeypatch.delenv("CREME_API_KEY")
    code, _, err = creme("edits", "list")
    assert code == 1 and err.startswith("creme edits list: 401 ")
    monkeypatch.setenv("CREME_API_KEY", service.keys["edit"])
    code, _, err = creme("patch", PROMPT, "--hop1", HOP1, "--bridge", "Japan", "--answer", "Tokyo", "--wait", "0.2")
    assert code == 1 and err.splitlines()[-1].startswith("creme patch: Wait timed out: edit ")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["edits", "list", "--limit", "0"], ["edits", "revert", "x", "--if-match", "v1"], ["patch", PROMPT]):
        with pytest.raises(SystemExit) as usage:
            main(argv)
        assert usage.value.code == 2
        assert "usage: creme" in capsys.readouterr().err


def test_patch_without_bridge_and_answer_reads_them_from_the_model(creme: Creme) -> None:
    code, out, err = creme("patch", PROMPT, "--hop1", HOP1, "--layers", "13", "--apply", "never")
    assert code == 0, err
    assert field(out, "status") == "computed"
    assert field(out, "bridge") == "Japan  (read from the model)"
    assert field(out, "answer") == "Tokyo  (read from the model)"


def test_models_lists_the_served_model_and_model_names_it(creme: Creme, service: LiveService) -> None:
    code, out, err = creme("models")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split()[:3] == ["model", "served", "family"]
    assert row.split()[:5] == [EMBEDDED_MODEL, "yes", "llama", "float32", "30"]
    [model] = json.loads(creme("models", "--json")[1])
    assert model["base_model"] == EMBEDDED_MODEL and [w["alive"] for w in model["workers"]] == [True]
    assert creme("edits", "list", "--model", EMBEDDED_MODEL, "--json")[0] == 0
    code, _, err = creme("patch", PROMPT, "--hop1", HOP1, "--model", "no-such-model", "--wait", "0")
    assert code == 1 and err.startswith("creme patch: 422 ") and "no worker serves model 'no-such-model'" in err


def test_a_client_names_its_model_in_every_body_and_read() -> None:
    call = Call("POST", "/v1/analyses/logit-lens", json={"prompt": "p"})
    assert call.for_model("m").json == {"model": "m", "prompt": "p"} and call.for_model(None) is call
    assert Call("GET", "/v1/edits", params={"limit": 5}).for_model("m").params == {"model": "m", "limit": 5}
    for untouched in (Call("GET", "/v1/edits/e1"), Call("POST", "/v1/edits/e1/apply"), Call("GET", "/v1/models")):
        assert untouched.for_model("m") == untouched
