"""Run `creme` commands as real processes and drive the patch → history → revert flow over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from service.engine.cases import TwoHopCase
from service.engine.judging import is_correct
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 240.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def creme_env(**overrides: str) -> dict[str, str]:
    """The environment for child `creme` processes: offline, fast heartbeats, the shared model cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREME_")}
    env.update(
        HF_HUB_OFFLINE="1",
        OMP_WAIT_POLICY="PASSIVE",
        CREME_CACHE_DIR=os.environ.get("CREME_CACHE_DIR", str(Path.home() / ".cache" / "creme")),
        CREME_HEARTBEAT_SECONDS="1",
        CREME_RECONCILE_SECONDS="1",
        CREME_WORKER_LEASE_SECONDS="15",
    )
    env.update(overrides)
    return env


def run_creme(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )


@contextmanager
def creme_process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `creme ...` child process, logging to ``log``; terminated (then killed) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM ``proc`` and wait ``timeout`` seconds for it to exit, then SIGKILL it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def processes(*specs: tuple[list[str], dict[str, str], Path]) -> Iterator[list[subprocess.Popen[bytes]]]:
    with ExitStack() as stack:
        yield [stack.enter_context(creme_process(*spec)) for spec in specs]


def score(client: httpx.Client, prompt: str, answer: str) -> float:
    response = client.post("/v1/score", json={"prompt": prompt, "answers": [answer]}, headers={"Prefer": "wait=120"})
    assert response.status_code == 200, response.text
    return float(response.json()["answers"][0]["probability"])


def generate(client: httpx.Client, prompt: str) -> str:
    body = {"prompt": prompt, "max_new_tokens": 8}
    response = client.post("/v1/generate", json=body, headers={"Prefer": "wait=120"})
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def converged_at(client: httpx.Client, n_workers: int) -> dict | None:
    """The model status once ``n_workers`` live workers all serve the desired state version."""
    model = client.get("/v1/model").json()
    alive = [w for w in model["workers"] if w["alive"]]
    if model["converged"] and len(alive) == n_workers:
        return model
    return None


def exercise_patch_flow(client: httpx.Client, case: TwoHopCase, n_workers: int, logs: list[Path]) -> None:
    """Patch a failing case, check it in history, revert it exactly, and re-apply it."""
    start = wait_for("workers to register", lambda: converged_at(client, n_workers), logs=logs)
    checksums = {w["weights_checksum"] for w in start["workers"]}
    assert len(checksums) == 1
    p_before = score(client, case.compositional, case.answer)
    text_before = generate(client, case.compositional)
    assert not is_correct(text_before, case.answer)

    body = {
        "prompt": case.compositional,
        "hop1_phrase": case.hop1_phrase,
        "bridge": case.bridge,
        "answer": case.answer,
        "paraphrases": list(case.questions),
        "apply": "always",
    }
    created = client.post("/v1/edits", json=body, headers={"Prefer": "wait=200"})
    assert created.status_code in (200, 202), created.text
    edit_id = created.json()["id"]
    edit = wait_for("the edit to be applied", lambda: _edit_if(client, edit_id, "applied"), logs=logs)
    assert edit["metrics"]["correction"]["p_post_mean"] > edit["metrics"]["correction"]["p_pre_mean"]
    assert edit["layers"]

    applied = wait_for("workers to load the edit", lambda: converged_at(client, n_workers), logs=logs)
    assert applied["active_edits"] == [edit_id]
    assert len({w["weights_checksum"] for w in applied["workers"]}) == 1
    assert applied["workers"][0]["weights_checksum"] not in checksums
    p_patched = score(client, case.compositional, case.answer)
    assert p_patched > p_before * 1.5
    text_patched = generate(client, case.compositional)
    assert is_correct(text_patched, case.answer), text_patched

    history = client.get("/v1/edits").json()["items"]
    assert [e["id"] for e in history] == [edit_id]
    assert history[0]["metrics"]["correction"]["win_rate_post"] is not None

    version = applied["state_version"]
    reverted = client.post(f"/v1/edits/{edit_id}/revert", headers={"If-Match": f'"{version}"'})
    assert reverted.status_code == 200, reverted.text
    new_version = reverted.json()["state"]["version"]
    assert new_version == version + 1
    after = wait_for("workers to revert", lambda: _at_version(converged_at(client, n_workers), new_version), logs=logs)
    assert {w["weights_checksum"] for w in after["workers"]} == checksums
    assert all(w["state_version"] == new_version for w in after["workers"])
    for _ in range(2 * n_workers):  # several scores, so every worker answers at least once in practice
        assert score(client, case.compositional, case.answer) == p_before

    again = client.post(f"/v1/edits/{edit_id}/apply")
    assert again.status_code == 200, again.text
    final = again.json()["state"]["version"]
    wait_for("workers to re-apply", lambda: _at_version(converged_at(client, n_workers), final), logs=logs)
    assert score(client, case.compositional, case.answer) == p_patched


def _edit_if(client: httpx.Client, edit_id: str, status: str) -> dict | None:
    edit = client.get(f"/v1/edits/{edit_id}").json()
    if edit["status"] == "failed":
        raise AssertionError(f"edit failed: {edit['error']}")
    return edit if edit["status"] == status else None


def _at_version(model: dict | None, version: int) -> dict | None:
    return model if model is not None and model["state_version"] == version else None
