"""Postgres goes away (the private server is stopped, or the proxy to it is cut) and comes back.

Meanwhile every API call that needs the database answers 503 ``application/problem+json`` (no stack
trace), ``/healthz`` still answers, and the worker stays alive without claiming anything. Afterwards
everything resumes: the edit that was running is finished exactly once, the queued job runs, and a
job submitted after the recovery succeeds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.faults.conftest import RedisServer, Stoppable
from tests.faults.support import EDIT_BODY, LEASE_SECONDS, cluster
from tests.support import assert_problem

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_database_outage_is_503_and_everything_resumes(
    tmp_path: Path, pg_server: Stoppable, fault_db: str, redis_server: RedisServer
) -> None:
    with cluster(tmp_path, fault_db, redis_server.url, ["worker-a"]) as c:
        edit_id, edit_job = c.submit_edit()
        c.running_step(edit_job, min_step=1)
        queued = c.submit_score()

        pg_server.stop()
        try:
            calls = [
                ("GET", "/v1/edits", None),
                ("GET", f"/v1/edits/{edit_id}", None),
                ("GET", f"/v1/edits/{edit_id}/delta", None),
                ("GET", f"/v1/jobs/{queued}", None),
                ("GET", "/v1/jobs", None),
                ("GET", "/v1/model", None),
                ("POST", "/v1/edits", EDIT_BODY),
                ("POST", f"/v1/edits/{edit_id}/revert", None),
                ("POST", f"/v1/jobs/{queued}/cancel", None),
                ("POST", "/v1/score", {"prompt": "The capital of Japan is", "answers": ["Tokyo"]}),
                ("POST", "/v1/analyses/logit-lens", {"prompt": "The capital of Japan is", "targets": ["Tokyo"]}),
            ]
            for method, path, body in calls:
                response = c.client.request(method, path, json=body)
                problem = assert_problem(response, 503, "database-unavailable")
                assert response.headers.get("retry-after"), (method, path)
                assert problem["instance"] == path
            ready = assert_problem(c.client.get("/readyz"), 503, "not-ready")
            assert "database" in ready["detail"] and ready["checks"]["database"]["ok"] is False
            assert c.client.get("/healthz").status_code == 200
            assert c.client.get("/metrics").status_code == 200  # without the database's gauges

            c.start_worker("worker-b")  # a worker that starts during the outage waits for the database
            # Longer than a lease: the workers' loops, heartbeats and claims all fail and back off.
            time.sleep(LEASE_SECONDS + 4)
            assert all(c.alive(name) for name in ("gateway", "worker-a", "worker-b"))
        finally:
            pg_server.start()

        c.wait("/readyz to recover", lambda: c.client.get("/readyz").status_code == 200)
        edit_job_done = c.finished(edit_job)  # retried once if the outage hit it mid-flight
        assert 1 <= edit_job_done["attempts"] <= 2
        c.assert_applied_once(edit_id)
        assert c.finished(queued)["attempts"] == 1
        after = c.score()
        assert after["probability"] > 0 and after["state_version"] == 1
        model = c.converged(2, version=1)
        assert model["active_edits"] == [edit_id]
        assert len({w["weights_checksum"] for w in model["workers"]}) == 1


def test_a_connection_killed_mid_write_is_retried_not_failed(
    tmp_path: Path, fault_db: str, redis_server: RedisServer
) -> None:
    """The worker's connection dies while it stores the edit (as in a failover): a retry, not a failure."""
    with cluster(tmp_path, fault_db, redis_server.url, ["worker-a"]) as c:
        edit_id, edit_job = c.submit_edit()
        c.running_step(edit_job, min_step=1)
        with c.sessions() as blocker:
            # Hold the deltas table so the worker's write waits where we can see it, then kill it there.
            blocker.execute(text("LOCK TABLE edit_deltas IN ACCESS EXCLUSIVE MODE"))
            waiting = text(
                "SELECT l.pid FROM pg_locks l JOIN pg_class t ON t.oid = l.relation "
                "WHERE t.relname = 'edit_deltas' AND NOT l.granted"
            )
            pid = c.wait("the worker to write the delta", lambda: blocker.scalar(waiting))
            assert blocker.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}) is True
            blocker.rollback()

        job = c.finished(edit_job)  # the lease expires and the sweep retries it
        assert job["attempts"] == 2
        c.assert_applied_once(edit_id)
        c.converged(1, version=1)
