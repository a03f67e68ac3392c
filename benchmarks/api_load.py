"""Load the distributed service (Postgres + Redis + gateway + N worker processes) and time it.

Measures request throughput and p50/p99 latency of ``GET /v1/edits`` and of job submission
(``POST /v1/analyses/logit-lens``, answered 202), and the time from a revert to every worker
reporting the new state version. Starts its own processes on a fresh Postgres database.

Usage: python benchmarks/api_load.py [--workers 2] [--requests 400] [--concurrency 8]
         [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.support import converged_at, creme_env, free_port, processes, run_creme, wait_for

CASE = {
    "prompt": "The capital of the country that Daisuke Sasaki is a citizen of is",
    "hop1_phrase": "the country that Daisuke Sasaki is a citizen of",
    "bridge": "Japan",
    "answer": "Tokyo",
    "apply": "always",
}  # MQuAKE-CF-3k (MIT), via Li et al. 2024


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load(name: str, call: Callable[[], httpx.Response], requests: int, concurrency: int) -> dict:
    """Run ``requests`` calls on ``concurrency`` threads; latency in ms, throughput in requests/s."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    def one(_: int) -> None:
        started = time.perf_counter()
        status = call().status_code
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    elapsed = time.perf_counter() - started
    return {
        "name": name,
        "requests": requests,
        "concurrency": concurrency,
        "throughput_rps": requests / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": _percentile(latencies, 0.99),
        "statuses": statuses,
    }


def revert_to_converged(client: httpx.Client, edit_id: str, n_workers: int) -> dict:
    """Seconds from the revert (and the re-apply) request to every live worker at the new version."""
    timings = {}
    for action in ("revert", "apply"):
        started = time.perf_counter()
        response = client.post(f"/v1/edits/{edit_id}/{action}")
        response.raise_for_status()
        version = response.json()["state"]["version"]

        def at_version(v: int = version) -> bool:
            model = converged_at(client, n_workers)
            return model is not None and model["state_version"] == v

        wait_for(f"workers to {action}", at_version, timeout=120)
        timings[f"{action}_to_converged_s"] = time.perf_counter() - started
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/api_load.json"))
    args = parser.parse_args()

    admin = create_engine(make_url(args.postgres), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    database = f"creme_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    url = make_url(args.postgres).set(database=database).render_as_string(hide_password=False)
    env = creme_env(CREME_DATABASE_URL=url, CREME_REDIS_URL=args.redis, CREME_QUEUE_PREFIX=f"bench-{database}")
    try:
        if run_creme(["migrate"], env).returncode != 0:
            raise SystemExit("creme migrate failed")
        port = free_port()
        logs = Path(tempfile.mkdtemp(prefix="creme-bench-"))
        specs = [(["serve", "--port", str(port)], env, logs / "gateway.log")]
        specs += [
            (["worker"], {**env, "CREME_WORKER_ID": f"bench-{i}"}, logs / f"worker-{i}.log")
            for i in range(args.workers)
        ]
        with processes(*specs), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            wait_for("workers", lambda: converged_at(client, args.workers), logs=[s[2] for s in specs])
            edit = client.post("/v1/edits", json={**CASE, "layers": [12, 13, 14]}, headers={"Prefer": "wait=200"})
            edit.raise_for_status()
            edit_id = edit.json()["id"]
            wait_for("the edit", lambda: client.get(f"/v1/edits/{edit_id}").json()["status"] == "applied")
            convergence = revert_to_converged(client, edit_id, args.workers)
            lens = {"prompt": "The capital of Japan is", "targets": ["Tokyo"]}
            results = [
                load("GET /v1/edits", lambda: client.get("/v1/edits"), args.requests, args.concurrency),
                load(
                    "POST /v1/analyses/logit-lens (202)",
                    lambda: client.post("/v1/analyses/logit-lens", json=lens),
                    args.requests,
                    args.concurrency,
                ),
            ]
        report = {"workers": args.workers, "convergence": convergence, "load": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(json.dumps(report, indent=2))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
