"""Redis loses everything (FLUSHALL) or goes away and comes back empty: no job is lost or run twice.

The database holds the jobs; Redis only carries their ids. While Redis is down the gateway still
answers reads and accepts jobs (committed, enqueued later by the sweep), and ``/readyz`` names the
queue as failing. After Redis returns, every job, queued or running at the time, completes once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.conftest import RedisServer
from tests.faults.support import Cluster, cluster
from tests.support import assert_problem

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def _busy(c: Cluster) -> tuple[str, str, list[str]]:
    """An edit running on the only worker and three score jobs queued behind it."""
    edit_id, edit_job = c.submit_edit()
    c.running_step(edit_job, min_step=1)
    return edit_id, edit_job, [c.submit_score() for _ in range(3)]


def _all_done_once(c: Cluster, edit_id: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        job = c.finished(job_id)
        assert job["attempts"] == 1, job  # none was run twice
    c.assert_applied_once(edit_id)


def test_flushed_redis_loses_no_job(tmp_path: Path, fault_db: str, redis_server: RedisServer) -> None:
    with cluster(tmp_path, fault_db, redis_server.url, ["worker-a"]) as c:
        edit_id, edit_job, queued = _busy(c)

        redis_server.flushall()  # the stream, its consumer group and the pending entries are gone
        after = c.submit_score()

        _all_done_once(c, edit_id, [edit_job, *queued, after])
        c.converged(1)
        assert c.client.get("/readyz").status_code == 200


def test_redis_down_then_back_empty_loses_no_job(tmp_path: Path, fault_db: str, redis_server: RedisServer) -> None:
    with cluster(tmp_path, fault_db, redis_server.url, ["worker-a"]) as c:
        edit_id, edit_job, queued = _busy(c)

        redis_server.stop()
        ready = assert_problem(c.client.get("/readyz"), 503, "not-ready")
        assert "queue" in ready["detail"] and ready["checks"]["queue"]["ok"] is False
        assert ready["checks"]["database"]["ok"] is True
        edits = c.client.get("/v1/edits")
        assert edits.status_code == 200 and [e["id"] for e in edits.json()["items"]] == [edit_id]
        assert c.client.get(f"/v1/jobs/{queued[0]}").status_code == 200
        during = c.submit_score()  # committed now, enqueued by a sweep once Redis is back
        assert c.job(during)["status"] == "queued"
        # The running edit finishes meanwhile (its outcome goes to the database; the ack waits).
        c.wait("the running edit to finish without Redis", lambda: c.job(edit_job)["status"] != "running")
        assert c.alive("worker-a") and c.alive("gateway")

        redis_server.start()  # same port, empty: no stream, no group, no pending entries
        _all_done_once(c, edit_id, [edit_job, *queued, during])
        c.converged(1)
        c.wait("/readyz to recover", lambda: c.client.get("/readyz").status_code == 200)
