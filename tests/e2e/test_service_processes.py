"""End to end through HTTP with real processes: the embedded default, and Postgres + Redis + 2 workers."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import creme_env, creme_process, exercise_patch_flow, free_port, processes, run_creme
from tests.engine.helpers import failing_case
from tests.fixtures.db import reset_postgres
from tests.support import wait_for

pytestmark = pytest.mark.slow


def test_embedded_serve_patches_reverts_and_analyses(tmp_path: Path) -> None:
    port = free_port()
    env = creme_env(CREME_DATABASE_URL=f"sqlite:///{tmp_path / 'creme.db'}", CREME_PORT=str(port))
    log = tmp_path / "serve.log"
    with creme_process(["serve"], env, log), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=240) as client:
        wait_for("the API", lambda: client.get("/healthz").status_code == 200, logs=[log])
        exercise_patch_flow(client, failing_case("mquake-2hop-0394"), n_workers=1, logs=[log])

        lens = client.post(
            "/v1/analyses/logit-lens",
            json={"prompt": "The capital of Japan is", "targets": ["Tokyo"]},
            headers={"Prefer": "wait=60"},
        )
        assert lens.status_code in (200, 202), lens.text
        job = wait_for(
            "the lens job",
            lambda: (j := client.get(f"/v1/analyses/{lens.json()['id']}").json())["status"] == "succeeded" and j,
            logs=[log],
        )
        layers = job["result"]["layers"]
        assert len(layers) == 30 and all("targets" in layer for layer in layers)


@pytest.mark.postgres
@pytest.mark.redis
def test_two_worker_processes_converge_on_postgres_and_redis(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    reset_postgres(postgres_url)
    env = creme_env(
        CREME_DATABASE_URL=postgres_url, CREME_REDIS_URL=redis_url, CREME_QUEUE_PREFIX=f"e2e-{uuid.uuid4().hex}"
    )
    migrated = run_creme(["migrate"], env)
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    logs = [tmp_path / "gateway.log", tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    specs = [
        (["serve", "--port", str(port)], env, logs[0]),
        (["worker"], {**env, "CREME_WORKER_ID": "worker-a"}, logs[1]),
        (["worker"], {**env, "CREME_WORKER_ID": "worker-b"}, logs[2]),
    ]
    with processes(*specs), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=240) as client:
        wait_for("the gateway", lambda: client.get("/healthz").status_code == 200, logs=logs)
        exercise_patch_flow(client, failing_case("mquake-2hop-0394"), n_workers=2, logs=logs)
