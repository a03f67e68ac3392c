"""The desired model state under concurrent changes, corrupt deltas, and late or restarted workers.

One gateway and two workers serve the whole module; one real edit is computed through the API
once, and further edits are clones of it with scaled (distinct, valid) deltas. Each test first puts
the cluster back to: workers a and b running, that edit alone active, everyone converged.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from service.db import Edit, ModelState, StateEvent
from tests.faults.conftest import RedisServer
from tests.faults.support import Cluster, clone_edit, cluster, corrupt_delta
from tests.support import assert_problem

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

WORKERS = ["worker-a", "worker-b"]


@dataclass
class World:
    c: Cluster
    edit_id: str  # computed through the API, applied
    p_base: float  # p(answer) on the base model
    p_patched: float  # p(answer) with the edit applied
    pristine: str  # weights checksum of the base model
    patched: str  # weights checksum with the edit alone applied

    def reset(self) -> dict[str, Any]:
        """Workers a and b (only) running, the edit alone active, all converged; the model status."""
        c = self.c
        for name in c.running_workers():
            if name not in WORKERS:
                c.stop(name)
        for name in WORKERS:
            if not c.alive(name):
                c.start_worker(name)
        for other in c.client.get("/v1/model").json()["active_edits"]:
            if other != self.edit_id:
                assert c.client.post(f"/v1/edits/{other}/revert").status_code == 200
        response = c.client.post(f"/v1/edits/{self.edit_id}/apply")
        assert response.status_code in (200, 409), response.text  # 409: it is applied already
        model = c.converged(len(WORKERS), version=c.client.get("/v1/model").json()["state_version"])
        assert model["active_edits"] == [self.edit_id]
        assert {w["weights_checksum"] for w in model["workers"] if w["alive"]} == {self.patched}
        return model


def _checksums(model: dict[str, Any]) -> set[str]:
    return {w["weights_checksum"] for w in model["workers"] if w["alive"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, module_fault_db: str, module_redis: RedisServer) -> Iterator[World]:
    root = tmp_path_factory.mktemp("state")
    with cluster(root, module_fault_db, module_redis.url, WORKERS) as c:
        (pristine,) = _checksums(c.converged(len(WORKERS)))
        p_base = c.score()["probability"]
        edit_id, job_id = c.submit_edit()
        assert c.finished(job_id)["result"]["applied"] is True
        (patched,) = _checksums(c.converged(len(WORKERS), version=1))
        assert patched != pristine
        p_patched = c.score()["probability"]
        assert p_patched > p_base
        yield World(c, edit_id, p_base, p_patched, pristine, patched)


def _change(base_url: str, path: str, version: int, barrier: threading.Barrier) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        barrier.wait()
        return client.post(path, headers={"If-Match": f'"{version}"'})


def test_two_changes_on_one_version_exactly_one_wins(world: World) -> None:
    c = world.c
    version = world.reset()["state_version"]
    other = clone_edit(c, world.edit_id, scale=0.5)
    paths = [f"/v1/edits/{world.edit_id}/revert", f"/v1/edits/{other}/apply"]
    barrier = threading.Barrier(len(paths))
    with ThreadPoolExecutor(len(paths)) as pool:
        responses = list(pool.map(lambda p: _change(str(c.client.base_url), p, version, barrier), paths))

    assert sorted(r.status_code for r in responses) == [200, 412], [r.text for r in responses]
    won, lost = sorted(zip(responses, paths, strict=True), key=lambda rp: rp[0].status_code)
    assert won[0].json()["state"]["version"] == version + 1
    problem = assert_problem(lost[0], 412, "precondition-failed")
    assert problem["current_version"] == version + 1 and problem["expected_version"] == version
    assert lost[0].headers["etag"] == f'"{version + 1}"'

    model = c.converged(len(WORKERS), version=version + 1)
    if won[1].endswith("/revert"):  # the apply lost: nothing of it happened
        assert model["active_edits"] == [] and _checksums(model) == {world.pristine}
        assert c.edit(other)["status"] == "computed"
    else:
        assert model["active_edits"] == [world.edit_id, other]
        assert c.edit(world.edit_id)["status"] == "applied"
    with c.session() as session:
        assert len(session.scalars(select(StateEvent).where(StateEvent.version == version + 1)).all()) == 1


THREADS, OPS_PER_THREAD, MAX_TRIES = 8, 10, 200


def _flip_randomly(base_url: str, edits: list[str], seed: int) -> list[tuple[int, str, str]]:
    """Apply or revert random edits with If-Match, re-reading and retrying when beaten to it."""
    rng = random.Random(seed)
    done: list[tuple[int, str, str]] = []
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for _ in range(OPS_PER_THREAD):
            edit_id = rng.choice(edits)
            for _try in range(MAX_TRIES):
                model = client.get("/v1/model").json()
                version = model["state_version"]
                action = "revert" if edit_id in model["active_edits"] else "apply"
                response = client.post(f"/v1/edits/{edit_id}/{action}", headers={"If-Match": f'"{version}"'})
                if response.status_code == 200:
                    done.append((response.json()["state"]["version"], action, edit_id))
                    break
                if response.status_code == 412:
                    assert assert_problem(response, 412)["current_version"] > version
                    continue
                # A 409 (edit no longer in the status we saw) is only fair if the state moved meanwhile.
                assert response.status_code == 409, response.text
                assert client.get("/v1/model").json()["state_version"] > version, response.text
            else:
                raise AssertionError(f"{action} of {edit_id} never got through in {MAX_TRIES} tries")
    return done


def test_many_concurrent_state_changes_stay_consistent(world: World) -> None:
    c = world.c
    start = world.reset()
    v0 = start["state_version"]
    edits = [world.edit_id, clone_edit(c, world.edit_id, scale=0.5), clone_edit(c, world.edit_id, scale=-0.25)]
    base_url = str(c.client.base_url)
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda seed: _flip_randomly(base_url, edits, seed), range(THREADS)))

    done = sorted(op for ops in results for op in ops)
    n = THREADS * OPS_PER_THREAD
    assert len(done) == n
    assert [version for version, _, _ in done] == list(range(v0 + 1, v0 + n + 1))  # each version won once

    with c.session() as session:
        state = session.scalars(select(ModelState)).one()
        events = session.execute(
            select(StateEvent.version, StateEvent.action, StateEvent.edit_id)
            .where(StateEvent.version > v0)
            .order_by(StateEvent.version)
        ).all()
        statuses = dict(session.execute(select(Edit.id, Edit.status).where(Edit.id.in_(edits))).tuples().all())
    assert state.version == v0 + n
    assert [tuple(e) for e in events] == done  # the audit log is exactly the changes that were acknowledged
    active = list(start["active_edits"])
    for _, action, edit_id in events:  # replaying the log gives the final active list
        assert (edit_id in active) == (action == "revert")
        active = [e for e in active if e != edit_id] + ([edit_id] if action == "apply" else [])
    assert active == state.active_edit_ids
    ever_applied = set(start["active_edits"]) | {e for _, action, e in events if action == "apply"}
    for edit_id in edits:
        expected = "applied" if edit_id in active else "reverted" if edit_id in ever_applied else "computed"
        assert statuses[edit_id] == expected, (edit_id, statuses)

    model = c.converged(len(WORKERS), version=v0 + n)
    assert model["active_edits"] == active
    assert len(_checksums(model)) == 1
    if not active:
        assert _checksums(model) == {world.pristine}


@pytest.mark.parametrize("corruption", ["changed-bytes", "nan", "wrong-shape"])
def test_a_corrupted_delta_of_an_applied_edit_is_refused(world: World, corruption: str) -> None:
    c = world.c
    world.reset()
    bad = clone_edit(c, world.edit_id, scale=0.5)
    applied = c.client.post(f"/v1/edits/{bad}/apply")
    assert applied.status_code == 200, applied.text
    version = applied.json()["state"]["version"]
    serving_bad = c.converged(len(WORKERS), version=version)
    assert len(_checksums(serving_bad)) == 1 and _checksums(serving_bad) != {world.patched}

    reason = corrupt_delta(c, bad, corruption)
    c.stop("worker-b")  # a restarted worker reads every active delta again
    c.start_worker("worker-b")

    edit = c.wait("the corrupt edit to be failed", lambda: (e := c.edit(bad))["status"] == "failed" and e)
    assert edit["error"]["title"] == "delta rejected" and reason in edit["error"]["detail"], edit["error"]
    model = c.converged(len(WORKERS), version=version + 1)  # withdrawn: a state change of its own
    assert model["active_edits"] == [world.edit_id]
    assert _checksums(model) == {world.patched}  # the last good state, bit for bit, on both workers
    with c.session() as session:
        last = session.execute(select(StateEvent).order_by(StateEvent.version.desc()).limit(1)).scalar_one()
    assert (last.version, last.action, last.edit_id, last.actor) == (version + 1, "revert", bad, "worker:worker-b")
    assert c.score()["probability"] == world.p_patched


def test_a_late_or_restarted_worker_converges_before_its_first_job(world: World) -> None:
    c = world.c
    world.reset()
    for name in WORKERS:
        c.stop(name)

    # While no worker runs, the edit is reverted; then a worker never seen before starts, and a
    # query is submitted at once: it must run on the reverted (base) weights.
    reverted = c.client.post(f"/v1/edits/{world.edit_id}/revert")
    assert reverted.status_code == 200, reverted.text
    version = reverted.json()["state"]["version"]
    c.start_worker("worker-c")
    result = c.score()
    assert c.claimed_by(result["job_id"]) == "worker-c"
    assert result["state_version"] == version
    assert result["probability"] == world.p_base
    row = c.worker_row("worker-c")
    assert row is not None and row.state_version == version and row.weights_checksum == world.pristine

    # worker-a restarts after the edit was applied again while it was down.
    c.stop("worker-c")
    again = c.client.post(f"/v1/edits/{world.edit_id}/apply")
    assert again.status_code == 200, again.text
    version = again.json()["state"]["version"]
    c.start_worker("worker-a")
    result = c.score()
    assert c.claimed_by(result["job_id"]) == "worker-a"
    assert result["state_version"] == version
    assert result["probability"] == world.p_patched
    row = c.worker_row("worker-a")
    assert row is not None and row.state_version == version and row.weights_checksum == world.patched
