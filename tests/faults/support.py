"""A gateway and named worker processes on a private Postgres and Redis, driven over HTTP and read in SQL.

Processes are real ``creme serve`` / ``creme worker`` children (see tests/e2e/support.py); the test
kills, stops and restarts them by name. The database is read directly to check what HTTP does not
show (who claimed a job, how many deltas and state events exist).
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from service.db import Edit, Job, ModelState, StateEvent, StoredDelta, Worker, make_engine, make_session_factory
from service.engine.delta import LayerFactors, delta_from_bytes, sha256_hex
from tests.e2e.support import REPO, converged_at, creme_env, free_port, stop_process
from tests.support import wait_for
from tests.workers.support import CASE

LEASE_SECONDS = 6  # a killed worker's job is retried this long after its last heartbeat
WAIT_SECONDS = 300.0  # generous: the 2-core machine is shared with other test runs

# MQuAKE case mquake-2hop-0072 (MIT; see tests/data/README.md): a short band, no paraphrases, so the
# edit computes in seconds and evaluates only its own prompt.
EDIT_BODY = {
    "prompt": CASE["prompt"],
    "hop1_phrase": CASE["hop1_phrase"],
    "bridge": CASE["bridge"],
    "answer": CASE["answer"],
    "paraphrases": [],
    "layers": [12, 13, 14],
    "apply": "always",
}


class Cluster:
    """``creme serve`` as a Redis gateway plus named ``creme worker`` processes on one database."""

    def __init__(self, root: Path, database_url: str, redis_url: str, **env: str) -> None:
        self.root = root
        self.database_url = database_url
        self.port = free_port()
        self.env = creme_env(
            CREME_DATABASE_URL=database_url,
            CREME_REDIS_URL=redis_url,
            CREME_QUEUE_PREFIX=f"faults-{uuid.uuid4().hex[:8]}",
            CREME_WORKER_LEASE_SECONDS=str(LEASE_SECONDS),
            **env,
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)
        self._engine = make_engine(database_url, poolclass=NullPool)
        self.sessions = make_session_factory(self._engine)

    # -- processes ---------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running")
        log = self.logs.setdefault(name, self.root / f"{name}.log")
        with log.open("ab") as out:
            out.write(f"\n==== start {name} at {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli", *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )
        self.procs[name] = proc
        return proc

    def start_gateway(self, wait: bool = True) -> None:
        self._spawn("gateway", ["serve", "--port", str(self.port)], self.env)
        if wait:
            self.wait_gateway()

    def wait_gateway(self) -> None:
        self.wait("the gateway", lambda: self.client.get("/healthz").status_code == 200)

    def start_worker(self, name: str) -> None:
        self._spawn(name, ["-v", "worker"], {**self.env, "CREME_WORKER_ID": name})  # -v: INFO logs

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def running_workers(self) -> list[str]:
        return sorted(name for name in self.procs if name != "gateway" and self.alive(name))

    def kill(self, name: str) -> None:
        """SIGKILL: no release, no last heartbeat, the queue entry stays pending on the dead consumer."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self, name: str) -> None:
        """SIGTERM and wait (the worker gives a running job back and reports itself stopped)."""
        proc = self.procs[name]
        if proc.poll() is None:
            stop_process(proc, timeout=60)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        self.client.close()
        self._engine.dispose()

    # -- waiting and reading -----------------------------------------------------------------

    def wait(self, what: str, check: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
        return wait_for(what, check, timeout=timeout, logs=list(self.logs.values()))

    def converged(self, n_workers: int, version: int | None = None) -> dict[str, Any]:
        """``GET /v1/model`` once exactly ``n_workers`` live workers serve the desired version (``version``)."""

        def check() -> dict[str, Any] | None:
            model = converged_at(self.client, n_workers)
            if model is None or (version is not None and model["state_version"] != version):
                return None
            return model

        return self.wait(f"{n_workers} converged workers", check)  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def finished(self, job_id: str, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
        """The job once terminal; it must have succeeded."""

        def check() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        job = self.wait(f"job {job_id} to finish", check, timeout)
        assert job["status"] == "succeeded", job
        return job  # type: ignore[no-any-return]

    def edit(self, edit_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/edits/{edit_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def submit_edit(self, **overrides: Any) -> tuple[str, str]:
        """POST an edit (CASE, layers 12-14, apply always); its id and its job's id."""
        response = self.client.post("/v1/edits", json={**EDIT_BODY, **overrides})
        assert response.status_code == 202, response.text
        return response.json()["id"], response.json()["job"]["id"]

    def submit_score(self, prompt: str = CASE["prompt"], answer: str = CASE["answer"]) -> str:
        """POST a score job without waiting for it; its id."""
        body = {"prompt": prompt, "answers": [answer]}
        response = self.client.post("/v1/score", json=body, headers={"Prefer": "wait=0"})
        assert response.status_code in (200, 202), response.text
        return response.json().get("job_id") or response.json()["id"]  # type: ignore[no-any-return]

    def score(self, prompt: str = CASE["prompt"], answer: str = CASE["answer"]) -> dict[str, Any]:
        """POST a score job and wait for it: its result plus ``probability`` (of the answer) and ``job_id``."""
        body = {"prompt": prompt, "answers": [answer]}
        response = self.client.post("/v1/score", json=body, headers={"Prefer": "wait=120"})
        if response.status_code == 202:  # still queued or running after the cap: keep waiting
            job = self.finished(response.json()["id"])
            result = {**job["result"], "job_id": job["id"]}
        else:
            assert response.status_code == 200, response.text
            result = response.json()
        return {**result, "probability": float(result["answers"][0]["probability"])}

    def running_step(self, job_id: str, min_step: int = 1) -> dict[str, Any]:
        """The job once a worker runs it at progress step ``min_step`` or later (polled quickly)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] == "running" and (job["progress"]["step"] or 0) >= min_step:
                return job
            assert job["status"] in ("queued", "running"), f"job finished before it could be interrupted: {job}"
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} never ran: {self.job(job_id)}")

    # -- the database ------------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session

    def claimed_by(self, job_id: str) -> str | None:
        with self.session() as session:
            return session.scalar(select(Job.claimed_by).where(Job.id == job_id))

    def worker_row(self, worker_id: str) -> Worker | None:
        with self.session() as session:
            return session.get(Worker, worker_id)

    def assert_applied_once(self, edit_id: str) -> None:
        """One edits row for the request, one delta, one apply event, and the edit is active once."""
        with self.session() as session:
            assert session.scalar(select(func.count()).select_from(Edit)) == 1
            assert (
                session.scalar(select(func.count()).select_from(StoredDelta).where(StoredDelta.edit_id == edit_id)) == 1
            )
            events = session.execute(select(StateEvent.action, StateEvent.edit_id).order_by(StateEvent.version)).all()
            assert [tuple(e) for e in events] == [("apply", edit_id)], events
            state = session.scalars(select(ModelState)).one()
            assert state.active_edit_ids == [edit_id]
            assert session.get(Edit, edit_id).status == "applied"  # type: ignore[union-attr]


@contextmanager
def cluster(root: Path, database_url: str, redis_url: str, workers: list[str]) -> Iterator[Cluster]:
    """A gateway and ``workers``, all converged on the empty state; everything stopped after."""
    c = Cluster(root, database_url, redis_url)
    try:
        c.start_gateway(wait=False)  # everything starts at once: each loads for seconds
        for name in workers:
            c.start_worker(name)
        c.wait_gateway()
        c.converged(len(workers))
        yield c
    finally:
        c.close()


def clone_edit(c: Cluster, source_id: str, *, scale: float) -> str:
    """A new computed edit whose delta is ``scale`` times the source's (a distinct, valid delta); its id."""
    with c.session() as session:
        source = session.get(Edit, source_id)
        stored = session.get(StoredDelta, source_id)
        assert source is not None and stored is not None
        delta = delta_from_bytes(bytes(stored.data), expected_sha256=stored.sha256)
        factors = tuple(LayerFactors(f.layer, f.u, f.r * scale) for f in delta.factors)
        data = dataclasses.replace(delta, factors=factors).to_bytes()
        columns = {
            col.key: getattr(source, col.key)
            for col in Edit.__table__.columns
            if col.key not in ("id", "status", "job_id", "applied_at", "reverted_at", "created_at", "updated_at")
        }
        clone = Edit(**columns, status="computed")
        clone.delta = StoredDelta(data=data, sha256=sha256_hex(data), shapes=stored.shapes)
        session.add(clone)
        session.commit()
        return clone.id


def corrupt_delta(c: Cluster, edit_id: str, kind: str) -> str:
    """Damage the stored delta of ``edit_id`` in place; a phrase the rejection reason will contain."""
    with c.session() as session:
        stored = session.get(StoredDelta, edit_id)
        assert stored is not None
        data = bytes(stored.data)
        if kind == "changed-bytes":  # bit rot: a tensor byte flips, the recorded sha256 stays
            flipped = bytearray(data)
            flipped[-5] ^= 0xFF
            stored.data = bytes(flipped)
            reason = "sha256"
        else:  # a well-formed file with a consistent sha256, but a poisoned or misshapen factor
            delta = delta_from_bytes(data, expected_sha256=stored.sha256)
            first = delta.factors[0]
            if kind == "nan":
                r = first.r.clone()
                r[3] = float("nan")
                bad = LayerFactors(first.layer, first.u, r)
                reason = "NaN"
            elif kind == "wrong-shape":
                bad = LayerFactors(first.layer, first.u[:-7].clone(), first.r)
                reason = "shape"
            else:
                raise ValueError(kind)
            stored.data = dataclasses.replace(delta, factors=(bad, *delta.factors[1:])).to_bytes()
            stored.sha256 = sha256_hex(stored.data)
        session.commit()
        return reason
