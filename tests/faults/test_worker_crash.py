"""A worker process dies (SIGKILL) in the middle of an edit: another finishes it, exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.conftest import RedisServer
from tests.faults.support import cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


def test_a_killed_worker_edit_is_finished_once_by_another(
    tmp_path: Path, fault_db: str, redis_server: RedisServer
) -> None:
    with cluster(tmp_path, fault_db, redis_server.url, ["worker-a", "worker-b"]) as c:
        pristine = {w["weights_checksum"] for w in c.converged(2)["workers"]}
        assert len(pristine) == 1

        edit_id, job_id = c.submit_edit()
        running = c.running_step(job_id, min_step=1)
        assert running["attempts"] == 1
        victim = c.claimed_by(job_id)
        assert victim in ("worker-a", "worker-b")
        survivor = "worker-b" if victim == "worker-a" else "worker-a"
        c.kill(victim)

        job = c.finished(job_id)  # after the lease expires, the survivor's sweep retries it
        assert job["attempts"] == 2
        assert c.claimed_by(job_id) == survivor
        assert job["result"]["applied"] is True
        assert c.edit(edit_id)["status"] == "applied"
        c.assert_applied_once(edit_id)

        model = c.converged(1)  # the victim's heartbeat has expired: only the survivor is live
        assert model["active_edits"] == [edit_id]
        assert [w["id"] for w in model["workers"] if w["alive"]] == [survivor]

        c.start_worker(victim)  # the victim comes back and converges on the same weights
        model = c.converged(2, version=model["state_version"])
        checksums = {w["weights_checksum"] for w in model["workers"] if w["alive"]}
        assert len(checksums) == 1 and checksums.isdisjoint(pristine)
        c.assert_applied_once(edit_id)
