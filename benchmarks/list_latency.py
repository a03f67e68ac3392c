"""Latency of ``GET /v1/edits`` with 100,000 edits in Postgres, and the plan of its query.

Creates the database of ``--url`` (it must not exist, unless ``--replace``), migrates it to head with
the service's Alembic migrations, bulk-inserts ``--edits`` rows (created_at spread over 30 days at
one-second resolution, so some share a timestamp; six statuses; two base models) with the state
events of the applied and reverted ones, runs ANALYZE, then times requests through the real app
(``api.create_app`` over a real session factory and an in-process queue) with FastAPI's in-process
``TestClient``: no network, but every middleware, the auth check, both queries and the JSON
encoding. For each case (first page, page 50 or deeper by cursor; limit 20 or 100; no filter, a
status, a model) it reports p50/p99 over ``--requests`` requests, and ``EXPLAIN (ANALYZE, BUFFERS)``
of the list query exactly as the app sent it: which index it reads and whether it sorts. The
database is dropped afterwards unless ``--keep``.

Usage: python benchmarks/list_latency.py [--url postgresql+psycopg://postgres@127.0.0.1:5432/creme_bench]
                                         [--edits 100000] [--requests 200] [--replace] [--keep]
                                         [--out benchmarks/results/list_latency.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, event, insert, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api import create_app
from service.db import Edit, StateEvent, make_engine, make_session_factory
from service.db.migrate import upgrade
from service.engine.inputs import EMBEDDED_MODEL
from service.jobs import InProcessQueue
from service.settings import Settings
from service.usecases.pagination import encode_cursor

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/creme_bench"
OTHER_MODEL = "/models/llama-2-7b-hf"
STATUSES = {"applied": 30, "computed": 25, "reverted": 15, "failed": 15, "pending": 10, "computing": 5}
PLANS_SHOWN = ("page 50", "page 2,500 (50,000 rows deep)", "status=computing (5%), page 50")
CASES: list[tuple[str, dict[str, Any], int]] = [  # name, query, page
    ("first page", {"limit": 20}, 1),
    ("first page", {"limit": 100}, 1),
    ("page 50", {"limit": 20}, 50),
    ("page 50", {"limit": 100}, 50),
    ("status=applied, first page", {"status": "applied", "limit": 20}, 1),
    ("status=applied, first page", {"status": "applied", "limit": 100}, 1),
    ("status=applied, page 50", {"status": "applied", "limit": 20}, 50),
    ("status=applied, page 50", {"status": "applied", "limit": 100}, 50),
    ("page 2,500 (50,000 rows deep)", {"limit": 20}, 2500),
    ("status=applied, page 1,000", {"status": "applied", "limit": 20}, 1000),
    ("status=computing (5%), page 50", {"status": "computing", "limit": 20}, 50),
    ("model=other (30%), page 50", {"model": OTHER_MODEL, "limit": 20}, 50),
]


@contextmanager
def fresh_database(url: str, *, replace: bool, keep: bool) -> Iterator[None]:
    """Create the database of ``url`` (dropping a previous one only with ``replace``); drop it after unless ``keep``."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = target.database
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
        if exists and not replace:
            raise SystemExit(f"database {name} exists; pass --replace to drop and recreate it")
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def edit_rows(n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """``n`` edits as a worker leaves them, oldest first."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    stamps = sorted(start + timedelta(seconds=rng.randrange(30 * 86400)) for _ in range(n))
    statuses = rng.choices(list(STATUSES), weights=list(STATUSES.values()), k=n)
    for i, (created, status) in enumerate(zip(stamps, statuses, strict=True)):
        done = status in ("computed", "applied", "reverted")
        yield {
            "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "status": status,
            "prompt": f"The capital of the country that person {i} is a citizen of is",
            "hop1_phrase": f"the country that person {i} is a citizen of",
            "bridge": "Japan",
            "answer": "Tokyo",
            "request": {"prompt": "...", "bridge": None, "answer": None, "paraphrases": ["a", "b"]},
            "layers": list(range(10, 21)),
            "method": "creme",
            "apply_policy": "if_improved",
            "base_model": OTHER_MODEL if rng.random() < 0.3 else EMBEDDED_MODEL,
            "base_fingerprint": "f" * 32,
            "computed_on_version": i if done else None,
            "metrics": {"delta_norms": {str(n): 3.0 for n in range(10, 21)}, "correction": {"win_rate": 0.7}}
            if done
            else None,
            "error": {"title": "delta rejected", "status": 422} if status == "failed" else None,
            "job_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "created_at": created,
            "updated_at": created + timedelta(seconds=5),
            "applied_at": created + timedelta(seconds=5) if status in ("applied", "reverted") else None,
            "reverted_at": created + timedelta(seconds=9) if status == "reverted" else None,
            "actor": "key:bench",
        }


def populate(engine: Engine, n: int, batch: int = 5000) -> dict[str, float]:
    """Insert ``n`` edits and their state events in batches; ANALYZE; seconds taken."""
    started = time.perf_counter()
    versions: dict[str, int] = {}
    edits: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for row in edit_rows(n):
            edits.append(row)
            actions = {"applied": ["apply"], "reverted": ["apply", "revert"]}.get(row["status"], [])
            for action in actions:
                versions[row["base_model"]] = version = versions.get(row["base_model"], 0) + 1
                events.append(
                    {
                        "base_model": row["base_model"],
                        "version": version,
                        "action": action,
                        "edit_id": row["id"],
                        "actor": "key:bench",
                        "created_at": row["applied_at"] if action == "apply" else row["reverted_at"],
                    }
                )
            if len(edits) >= batch:
                conn.execute(insert(Edit.__table__), edits)
                if events:
                    conn.execute(insert(StateEvent.__table__), events)
                edits, events = [], []
        if edits:
            conn.execute(insert(Edit.__table__), edits)
        if events:
            conn.execute(insert(StateEvent.__table__), events)
    inserted = time.perf_counter() - started
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")
    return {"insert_seconds": inserted, "analyze_seconds": time.perf_counter() - started - inserted}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cursor_for(engine: Engine, query: dict[str, Any], page: int) -> tuple[str | None, str]:
    """The cursor the API hands out for ``page`` of ``query`` (None: the first page), and the id the page starts with.

    Read from the table with OFFSET (the API would take ``page - 1`` requests to walk there).
    """
    where = " AND ".join(
        f"{column} = :{key}" for key, column in (("status", "status"), ("model", "base_model")) if key in query
    )
    order = f"FROM edits {'WHERE ' + where if where else ''} ORDER BY created_at DESC, id DESC"
    skip = (page - 1) * query["limit"]
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT created_at, id {order} OFFSET :skip LIMIT 2"), {**query, "skip": max(skip - 1, 0)}
        )
        rows = rows.all()
    if len(rows) < 2:
        raise SystemExit(f"fewer than {page} pages for {query}")
    if page == 1:
        return None, rows[0].id
    return encode_cursor(rows[0].created_at, rows[0].id), rows[1].id


class StatementLog:
    """The SQL statements an engine sends, with their parameters, while :attr:`on` is set."""

    def __init__(self, engine: Engine) -> None:
        self.on = False
        self.statements: list[tuple[str, Any]] = []
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if self.on:
            self.statements.append((statement, parameters))


def explain(engine: Engine, statement: str, parameters: Any) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of ``statement``: its text, the node types and indexes, and whether it sorts."""
    with engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", parameters).scalar_one()
        lines = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters).scalars().all()
    nodes: list[dict[str, Any]] = []
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return {
        "nodes": [n["Node Type"] for n in nodes],
        "indexes": sorted({n["Index Name"] for n in nodes if "Index Name" in n}),
        "sorts": any(n["Node Type"] in ("Sort", "Incremental Sort") for n in nodes),
        "index_scan": any(n["Node Type"] in ("Index Scan", "Index Only Scan", "Index Scan Backward") for n in nodes),
        "rows_removed_by_filter": sum(n.get("Rows Removed by Filter", 0) for n in nodes),
        "shared_buffers_hit": plan[0]["Plan"].get("Shared Hit Blocks", 0),
        "execution_ms": plan[0]["Execution Time"],
        "text": "\n".join(lines),
    }


def time_case(
    client: TestClient, engine: Engine, log: StatementLog, case: tuple[str, dict[str, Any], int], n: int
) -> dict[str, Any]:
    """p50/p99 of ``n`` requests of ``case``, and the plans of the queries one of them sent."""
    name, query, page = case
    cursor, first_id = cursor_for(engine, query, page)
    params = {**query, **({"cursor": cursor} if cursor else {})}
    for _ in range(5):  # warm-up
        client.get("/v1/edits", params=params).raise_for_status()
    log.statements.clear()
    log.on = True
    items = client.get("/v1/edits", params=params).json()["items"]
    log.on = False
    if len(items) != query["limit"] or items[0]["id"] != first_id:
        raise SystemExit(f"{name}: the page does not start where OFFSET says it does")
    statements = list(log.statements)
    listing = next((s, p) for s, p in statements if "FROM edits" in s)
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        client.get("/v1/edits", params=params).raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
    return {
        "case": name,
        "limit": query["limit"],
        "page": page,
        "rows": len(items),
        "requests": n,
        "statements_per_request": len(statements),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "mean_ms": statistics.fmean(latencies),
        "max_ms": max(latencies),
        "plan": explain(engine, *listing),
        "history_plan": explain(engine, *next((s, p) for s, p in statements if "FROM state_events" in s)),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['edits']:,} edits; {report['requests']} requests per case (in-process TestClient).",
        "",
        "| case | limit | p50 | p99 | SQL (EXPLAIN ANALYZE) | index | sort | rows filtered out |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        plan = r["plan"]
        lines.append(
            f"| {r['case']} | {r['limit']} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms"
            f" | {plan['execution_ms']:.2f} ms | {', '.join(plan['indexes']) or 'none'}"
            f" | {'yes' if plan['sorts'] else 'no'} | {plan['rows_removed_by_filter']:,} |"
        )
    for r in report["cases"]:
        if r["page"] > 1 and r["limit"] == 20 and r["case"] in PLANS_SHOWN:
            lines += ["", f"Plan of the list query, {r['case']}, limit 20:", "", "```", r["plan"]["text"], "```"]
    history = report["cases"][0]["history_plan"]["text"]
    lines += ["", "Plan of the history query of the first page:", "", "```", history, "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help="a Postgres URL; its database is created here")
    parser.add_argument("--edits", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per case")
    parser.add_argument("--replace", action="store_true", help="drop the database first if it exists")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/list_latency.json"))
    args = parser.parse_args()
    with fresh_database(args.url, replace=args.replace, keep=args.keep):
        upgrade(args.url)
        engine = make_engine(args.url)
        try:
            timing = populate(engine, args.edits)
            print(f"inserted {args.edits:,} edits in {timing['insert_seconds']:.1f} s", file=sys.stderr)
            log = StatementLog(engine)
            queue = InProcessQueue()
            app = create_app(
                Settings(database_url=args.url), session_factory=make_session_factory(engine), queue=queue, n_layers=30
            )
            with TestClient(app) as client:
                cases = []
                for case in CASES:
                    cases.append(time_case(client, engine, log, case, args.requests))
                    summary = {k: cases[-1][k] for k in ("case", "limit", "p50_ms", "p99_ms")}
                    print(json.dumps(summary), file=sys.stderr)
            queue.close()
            with engine.connect() as conn:
                server = conn.exec_driver_sql("SHOW server_version").scalar_one()
        finally:
            engine.dispose()
    report = {"edits": args.edits, "requests": args.requests, "postgres": server, **timing, "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
